"""glmft trainer: GLM-4 conversation format, chat template, loss masks and fine-tuning recipes.

The package talks to the rest of glmft only through files and exit codes. Modules that the service
imports (``conversation``, ``validation``, ``config``, ``datafiles``) never import torch.
"""

__version__ = "0.1.0"
