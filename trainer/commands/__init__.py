"""Subcommands of the ``glmft`` command line, one module each.

Every module exposes ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; heavy
imports (torch, transformers) happen inside ``run`` so ``glmft validate`` starts fast.
"""
