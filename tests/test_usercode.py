"""User code named by "module:function" strings: the spec format, the importable folder, and every error message."""

from __future__ import annotations

import sys
import textwrap

import pytest

from ranksearch.errors import RanksearchError
from ranksearch.usercode import call_user, check_spec, importable, load_callable


@pytest.fixture
def module(tmp_path, monkeypatch):
    """Write ``tmp_path/<name>.py`` with the given source and return its (unique) name; forgotten afterwards."""
    names = []

    def write(source: str) -> str:
        name = f"usercode_{len(names)}_{abs(hash(str(tmp_path)))}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("spec", ["module", "a:b:c", ":f", "m:", " : ", 3, None])
def test_a_spec_must_be_module_colon_function(spec):
    with pytest.raises(
        RanksearchError, match=r"^s\.toml: \[model\] factory must be a string 'package.module:function'"
    ):
        check_spec(spec, "s.toml: [model] factory")


def test_a_spec_splits_into_module_and_attribute():
    assert check_spec("pkg.mod : Class.build", "x") == ("pkg.mod", "Class.build")


def test_the_folder_is_importable_only_inside_the_block(tmp_path):
    entry = str(tmp_path.resolve())
    with importable(tmp_path):
        assert sys.path[0] == entry
        with importable(tmp_path):  # nested: the outer block keeps it
            pass
        assert entry in sys.path
    assert entry not in sys.path
    with importable(None):
        pass


def test_a_function_loads_from_the_folder_and_a_callable_passes_through(tmp_path, module):
    name = module(
        """
        def build(width=2):
            return width * 3

        class Maker:
            @staticmethod
            def make():
                return 1
        """
    )
    assert load_callable(f"{name}:build", "where", tmp_path)(width=4) == 12
    assert load_callable(f"{name}:Maker.make", "where", tmp_path)() == 1
    assert str(tmp_path.resolve()) not in sys.path
    assert load_callable(len, "where") is len


@pytest.mark.parametrize(
    ("source", "attribute", "message"),
    [
        (None, "build", r"^s\.toml: \[model\] factory: no module named '{name}' \(searched .+ and sys\.path\)$"),
        ("import not_a_module_anywhere\n", "build", r"importing '{name}' failed: No module named 'not_a_module_any"),
        ("raise ValueError('broken')\n", "build", r"importing '{name}' failed: ValueError: broken$"),
        ("x = 1\n", "build", r"module '{name}' has no attribute 'build'$"),
        ("x = 1\n", "x", r"'{name}:x' is not callable \(an object of type int\)$"),
    ],
    ids=["missing-module", "missing-import-inside", "import-raises", "missing-attribute", "not-callable"],
)
def test_loading_errors_name_the_file_section_and_key(tmp_path, module, source, attribute, message):
    name = module(source) if source is not None else "no_such_user_module"
    if source is None:
        (tmp_path / "other.py").write_text("")
    with pytest.raises(RanksearchError, match=message.format(name=name)):
        load_callable(f"{name}:{attribute}", "s.toml: [model] factory", tmp_path)


def test_a_missing_module_whose_name_starts_like_it_is_not_the_spec(tmp_path, module):
    """``own`` missing inside ``own_model`` is an import failure of ``own_model``, not "no module own_model"."""
    name = module("import own\n")
    with pytest.raises(RanksearchError, match=rf"importing '{name}' failed: No module named 'own'"):
        load_callable(f"{name}:f", "where", tmp_path)


def test_call_user_passes_options_and_names_what_raised(tmp_path, module):
    name = module(
        """
        def build(width=1):
            if width < 0:
                raise ValueError("width must be >= 0")
            return width
        """
    )
    build = load_callable(f"{name}:build", "where", tmp_path)
    assert call_user(build, {"width": 3}, "s.toml: [model] factory") == 3
    where = f"s.toml: [model] factory '{name}:build'"
    with pytest.raises(RanksearchError, match=rf"raised ValueError: width must be >= 0 \(at .*{name}\.py:4\)$"):
        call_user(build, {"width": -1}, where)
    with pytest.raises(RanksearchError, match=r"raised TypeError: .*unexpected keyword argument 'depth'$"):
        call_user(build, {"depth": 3}, where)


def test_call_user_prefixes_a_ranksearch_error(tmp_path):
    def factory():
        raise RanksearchError("image_size must be an integer >= 8, got 4")

    with pytest.raises(RanksearchError, match=r"^s\.toml: \[data\] factory 'm:f': image_size must be"):
        call_user(factory, {}, "s.toml: [data] factory 'm:f'")
