"""Build entry point: the C core is compiled by cffi from build_ffi.py."""

from setuptools import setup

setup(cffi_modules=["build_ffi.py:ffibuilder"])
