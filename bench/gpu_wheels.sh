#!/usr/bin/env bash
# Download into .whl/ the packages the API stack needs on the GPU machine, whose image holds
# torch, transformers, peft and Triton but not FastAPI, SQLModel, Celery or jieba (the
# evaluation bench runs the service code there). Python 3.12, x86-64 manylinux wheels; jieba
# and rouge-chinese come as sources and are built here (pure Python).
# On the GPU machine:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_34_x86_64 -d .whl \
  alembic==1.20.1 amqp==5.4.2 annotated-types==0.8.0 billiard==4.3.2 celery==5.7.0 \
  kombu==5.7.0 vine==5.1.0 defusedxml==0.7.1 python-dotenv==1.2.4 fastapi==0.163.2 \
  starlette==1.10.0 greenlet==3.5.6 mako==1.4.3 nltk==3.10.4 opentelemetry-api==1.45.3 \
  pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-multipart==0.0.34 \
  redis==8.1.0 ruamel.yaml==0.19.1 sqlalchemy==2.1.9 sqlmodel==0.0.50 \
  typing-inspection==0.4.5 tzlocal==5.4.5 truststore==0.10.5 httpx2==2.17.0 \
  httpcore2==2.17.0 click-didyoumean==0.3.1 click-repl==0.4.1 click-plugins==1.1.1.2 \
  prompt-toolkit==3.0.53 wcwidth==0.9.5
pip wheel -q --no-deps -w .whl jieba==0.42.1 rouge-chinese==1.0.3
echo "$(ls .whl | wc -l) wheels in .whl ($(du -sh .whl | cut -f1))"
