# setuptools still builds cffi extensions through cffi_modules; all metadata is in pyproject.toml
from setuptools import setup

setup(cffi_modules=["shmlog/core/_build.py:ffibuilder"])
