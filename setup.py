"""Build script. Pure-Python package metadata lives in pyproject.toml; this file exists for the
optional native operator in csrc/, which needs torch's C++ extension machinery."""

from setuptools import setup

setup()
