"""Every docstring example of the package runs and gives its stated result (the same check as
``pytest --doctest-modules lanczos_hessian``, here so that every test run makes it)."""

import doctest
import importlib
import pkgutil

import pytest

import lanczos_hessian

MODULES = sorted(name for _, name, _ in pkgutil.walk_packages(lanczos_hessian.__path__,
                                                              "lanczos_hessian.")
                 if not name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    failed, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert failed == 0, f"{failed} docstring example(s) of {name} failed (run pytest " \
                        f"--doctest-modules {module.__file__})"
