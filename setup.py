"""The C extension only; the project's metadata is in pyproject.toml.

doodle_lib/_simplify.c is doodle_lib.drawing.simplify's arithmetic (the web app's preprocessing hot path), bit for
bit as the numpy reference: no fused multiply-add (-ffp-contract=off), and never -ffast-math.
"""
from setuptools import Extension, setup

simplify = Extension(
    "doodle_lib._simplify", ["doodle_lib/_simplify.c"], libraries=["m"], extra_compile_args=["-ffp-contract=off"]
)
setup(ext_modules=[simplify])
