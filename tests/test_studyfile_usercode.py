"""Study files that name user code: [model] factory / torchvision / timm / transformers (+ weights), [data] factory,
[evaluator] metric, loss, batch, output. Every mistake is an error naming the file, section and key."""

from __future__ import annotations

import dataclasses
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from ranksearch.errors import RanksearchError
from ranksearch.runner import load_data, load_model, prepare
from ranksearch.studyfile import USER_CODE_KEYS, load_study_file

EXAMPLE = Path(__file__).resolve().parents[1] / "studies" / "examples" / "own_model" / "own_model.toml"
USER_MODULE = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

def mlp(width=4, fail=False):
    if fail:
        raise ValueError("no such width")
    return nn.Sequential(nn.Flatten(), nn.Linear(16, width), nn.ReLU(), nn.Linear(width, 3))

def not_a_model():
    return 3

WIDTH = 4

def data(kind="pair", n=24):
    x, y = torch.randn(n, 1, 4, 4), torch.arange(n) % 3
    train, val = TensorDataset(x, y), TensorDataset(x[:12], y[:12])
    return {
        "pair": (train, val),
        "dict": {"train": train, "val": val},
        "loaders": [DataLoader(train, batch_size=5), DataLoader(val, batch_size=7)],
        "string": "data",
        "triple": (train, val, val),
        "keys": {"training": train, "val": val},
        "tensor": (x, val),
    }[kind]

def score(logits, targets):
    return 1.0

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))
"""


@pytest.fixture
def study(tmp_path, monkeypatch):
    """``study(model=..., data=..., extra=...)`` writes ``tmp_path/s.toml`` beside a user module (a unique name,
    ``{mod}`` in the tables) and returns its path; the module is forgotten afterwards."""
    name = f"user_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)

    def write(model: str = 'factory = "{mod}:mlp"', data: str = 'factory = "{mod}:data"', extra: str = "") -> Path:
        text = f"[study]\nstorage = 'sqlite:///{tmp_path}/s.db'\n[model]\n{model}\n[data]\n{data}\n{extra}"
        path = tmp_path / "s.toml"
        path.write_text(text.replace("{mod}", name))
        return path

    write.module = name
    yield write
    sys.modules.pop(name, None)


@pytest.fixture
def code_settings(monkeypatch):
    """EvaluatorSettings with the user-code keys: the real class once it has them, else a stand-in with them."""
    import ranksearch.evaluator as evaluator

    if set(USER_CODE_KEYS) <= {f.name for f in dataclasses.fields(evaluator.EvaluatorSettings)}:
        return

    @dataclasses.dataclass(frozen=True)
    class WithCode(evaluator.EvaluatorSettings):
        metric: str | None = None
        loss: str | None = None
        batch: str | None = None
        output: str | None = None

    monkeypatch.setattr(evaluator, "EvaluatorSettings", WithCode)


def quiet(_: str) -> None:
    pass


# --- parsing -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        ('factory = "mlp"', None, r"\[model\] factory must be a string 'package.module:function', got 'mlp'"),
        ('name = "small_cnn"\nfactory = "m:f"', None, r"\[model\] needs exactly one of .*; got name and factory"),
        ("options = { width = 3 }", None, r"\[model\] needs exactly one of 'name' \(a built-in model\), 'path', 'fac"),
        ('timm = "a"\ntorchvision = "b"', None, r"\[model\] needs exactly one of .*; got torchvision and timm$"),
        ('torchvision = " "', None, r"\[model\] torchvision is empty"),
        ('name = "small_cnn"\nweights = "w.pt"', 'name = "digits"', r"\[model\] weights goes with factory, .* trained"),
        ('path = "m.pt"\nweights = "w.pt"', None, r"\[model\] weights goes with .*: a \[model\] path model holds its"),
        ("factory = 3", None, r"\[model\]: factory must be a string, got 3 \(int\)"),
        (None, 'name = "digits"\nfactory = "m:f"', r"\[data\] needs one of 'name' .* or 'factory', not both"),
        (None, 'factory = "m"', r"\[data\] factory must be a string 'package.module:function', got 'm'"),
        ('name = "small_cnn"', None, r"\[model\] name = 'small_cnn' is a built-in model, trained on a built-in \[dat"),
    ],
)
def test_bad_model_and_data_keys_name_the_file_section_and_key(study, model, data, message):
    path = study(**{k: v for k, v in (("model", model), ("data", data)) if v is not None})
    with pytest.raises(RanksearchError, match=rf"^{re.escape(str(path))}: {message}"):
        load_study_file(path)


def test_the_sections_keep_their_keys_and_data_defaults_to_digits(study):
    section = load_study_file(study(model='timm = "convnext_atto"\nweights = "w.pt"', data="batch_size = 8")).model
    assert (section.source, section.timm, section.weights) == ("timm", "convnext_atto", "w.pt")
    assert load_study_file(study(model='timm = "x"', data="batch_size = 8")).data.name == "digits"
    loaded = load_study_file(study())
    assert loaded.data.name is None and loaded.data.factory == f"{study.module}:data"
    assert loaded.folder == loaded.path.parent.resolve()


@pytest.mark.parametrize("key", USER_CODE_KEYS)
def test_evaluator_code_keys_are_checked_when_the_file_is_read(study, code_settings, key):
    path = study(extra=f'[evaluator]\n{key} = "no_colon"\n')
    with pytest.raises(RanksearchError, match=rf"{re.escape(str(path))}: \[evaluator\] {key} must be a string 'pa"):
        load_study_file(path)
    assert getattr(load_study_file(study(extra=f'[evaluator]\n{key} = "m:f"\n')).evaluator, key) == "m:f"


def test_a_model_argument_one_level_too_high_says_where_it_goes(study):
    path = study(model='factory = "m:f"\nwidth = 4')
    with pytest.raises(
        RanksearchError, match=r"\[model\]: unknown key 'width' \(valid: name, path, factory, .*; the mo"
    ):
        load_study_file(path)


def test_the_readme_shows_the_example_study_file():
    readme = (EXAMPLE.parents[3] / "README.md").read_text()
    example = "[study]" + EXAMPLE.read_text().split("\n[study]", 1)[1]  # without the comments above it
    assert f"```toml\n{example.strip()}\n```" in readme


def test_the_example_study_parses(code_settings):
    example = load_study_file(EXAMPLE)
    assert example.model.factory == "own_model:tiny_cnn" and example.data.factory == "own_model:digits"
    assert example.evaluator.metric == "own_model:balanced_accuracy" and example.folder == EXAMPLE.parent


# --- the user's model -------------------------------------------------------------------------------------
def test_a_factory_beside_the_study_file_builds_the_same_model_in_every_process(study):
    path = study(model='factory = "{mod}:mlp"\noptions = { width = 6 }')
    lines = []
    first = load_model(load_study_file(path), None, lines.append)
    second = load_model(load_study_file(path), None, quiet)
    assert first[1].out_features == 6 and not first.training
    assert all(
        torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )
    assert lines == [f"dense model from [model] factory = '{study.module}:mlp': used as it is ([training] trains "
                     "built-in models only)"]  # fmt: skip
    assert str(path.parent.resolve()) not in sys.path


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ('factory = "nowhere_module_xyz:mlp"', r"\[model\] factory: no module named 'nowhere_module_xyz' \(searched"),
        ('factory = "{mod}:missing"', r"\[model\] factory: module '{mod}' has no attribute 'missing'"),
        ('factory = "{mod}:WIDTH"', r"\[model\] factory: '{mod}:WIDTH' is not callable \(an object of type int\)"),
        (
            'factory = "{mod}:mlp"\noptions = { fail = true }',
            r"\[model\] factory '{mod}:mlp' raised ValueError: no such width \(at .*\.py:8\)$",
        ),
        (
            'factory = "{mod}:mlp"\noptions = { depth = 2 }',
            r"\[model\] factory '{mod}:mlp' raised TypeError: .*argument 'depth'",
        ),
        (
            'factory = "{mod}:not_a_model"',
            r"\[model\] factory '{mod}:not_a_model' returned an object of type int, not a",
        ),
        ('factory = "{mod}:mlp"\nweights = "nope.pt"', r"\[model\] weights 'nope.pt' does not exist"),
    ],
)
def test_bad_factories_name_the_file_section_and_key(study, model, message):
    path = study(model=model)
    with pytest.raises(RanksearchError, match=rf"^{re.escape(str(path))}: {message.format(mod=study.module)}"):
        load_model(load_study_file(path), None, quiet)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model_state_dict"])
def test_weights_load_a_state_dict_into_the_factory_model(study, tmp_path, wrap):
    trained = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 3))
    state = trained.state_dict()
    torch.save(state if wrap == "plain" else {wrap: state, "epoch": 3}, tmp_path / "w.pt")
    model = load_model(load_study_file(study(model='factory = "{mod}:mlp"\nweights = "w.pt"')), None, quiet)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), state.values(), strict=True))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda: nn.Linear(16, 3), r"cannot be read as a state dict .*goes in \[model\] path\)$"),
        (lambda: [torch.zeros(2)], r"holds a list, not a state dict \(save model.state_dict\(\)\)$"),
        (lambda: {"1.weight": torch.zeros(5, 16)}, r"does not fit the model: .*size mismatch for 1.weight"),
        (
            lambda: {"1.weight": torch.zeros(4, 16), "x": torch.zeros(1)},
            r"does not fit the model: missing 1.bias, 3.weight, 3.bias \(3\); unexpected x \(1\)$",
        ),
    ],
    ids=["whole-module", "not-a-dict", "shapes", "keys"],
)
def test_bad_weights_say_what_is_wrong(study, tmp_path, content, message):
    torch.save(content(), tmp_path / "w.pt")
    path = study(model='factory = "{mod}:mlp"\nweights = "w.pt"')
    with pytest.raises(RanksearchError, match=rf"^{re.escape(str(path))}: \[model\] weights 'w.pt' {message}"):
        load_model(load_study_file(path), None, quiet)


def test_a_saved_module_whose_class_lives_beside_the_study_file_loads(study, tmp_path):
    from ranksearch.usercode import load_callable

    net = load_callable(f"{study.module}:Net", "test", tmp_path)()
    torch.save(net, tmp_path / "net.pt")
    sys.modules.pop(study.module)  # as in a new process: only the study file's folder finds the class
    model = load_model(load_study_file(study(model='path = "net.pt"')), None, quiet)
    assert type(model).__name__ == "Net" and torch.equal(model.fc.weight, net.fc.weight)


# --- the user's data --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["pair", "dict"])
def test_datasets_from_a_data_factory_are_batched_and_shuffled_by_the_study_seed(study, kind):
    path = study(data=f'factory = "{{mod}}:data"\noptions = {{ kind = "{kind}" }}\nbatch_size = 5\neval_batch_size = 7')
    data = load_data(load_study_file(path))
    assert data.splits is None and data.train_loader.batch_size == 5 and data.val_loader.batch_size == 7
    again = load_data(load_study_file(path))  # another process: the same data, the same order
    assert all(torch.equal(a[0], b[0]) for a, b in zip(data.train_loader, again.train_loader, strict=True))
    first = next(iter(data.val_loader))[1]
    assert torch.equal(first, torch.arange(7) % 3)  # validation in order


def test_loaders_from_a_data_factory_are_used_as_they_are(study):
    data = load_data(load_study_file(study(data='factory = "{mod}:data"\noptions = { kind = "loaders" }')))
    assert isinstance(data.train_loader, DataLoader) and data.train_loader.batch_size == 5
    assert data.val_loader.batch_size == 7


def test_a_data_factory_may_return_built_in_splits(study):
    data = load_data(load_study_file(study(data='factory = "ranksearch.data:digits"\noptions = { image_size = 8 }')))
    assert data.splits is not None and data.splits.input_shape == (1, 8, 8)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("string", r"returned a str: return \(train, val\) DataLoaders or Datasets, or a dict of 'train' and 'val'$"),
        ("triple", r"returned a tuple of 3 items: return \(train, val\)"),
        ("keys", r"returned a dict with keys \['training', 'val'\]: return"),
        ("tensor", r"returned a Tensor as the train split: give a torch DataLoader or Dataset$"),
    ],
)
def test_bad_data_factories_name_the_file_section_and_key(study, kind, message):
    path = study(data=f'factory = "{{mod}}:data"\noptions = {{ kind = "{kind}" }}')
    where = f"{re.escape(str(path))}: \\[data\\] factory '{study.module}:data' "
    with pytest.raises(RanksearchError, match=f"^{where}{message}"):
        load_data(load_study_file(path))


def test_a_missing_data_factory_names_the_key(study):
    path = study(data='factory = "{mod}:nothing"')
    with pytest.raises(RanksearchError, match=rf"\[data\] factory: module '{study.module}' has no attribute 'nothing'"):
        load_data(load_study_file(path))


# --- the zoos (fake torchvision / timm / transformers modules: nothing installed, nothing downloaded) -------
class Calls(list):
    """What a fake zoo was asked to build: (function, args, kwargs), in order."""

    def recorder(self, name: str, result: object = None) -> object:
        def record(*args, **kwargs):
            self.append((name, args, kwargs))
            return nn.Linear(2, 2) if result is None else result

        return record


@pytest.fixture
def zoo(monkeypatch):
    """Fake torchvision, timm and transformers in sys.modules; returns the list of calls they record."""
    calls = Calls()
    models = types.ModuleType("torchvision.models")
    models.list_models = lambda: ["resnet18", "fasterrcnn_resnet50_fpn"]
    models.get_model = calls.recorder("torchvision.get_model")
    builders = {"resnet18": lambda weights=None, num_classes=1000: None,
                "fasterrcnn_resnet50_fpn": lambda weights=None, weights_backbone="IMAGENET1K_V1": None}  # fmt: skip
    models.get_model_builder = builders.__getitem__
    torchvision = types.ModuleType("torchvision")
    torchvision.models = models
    timm = types.ModuleType("timm")
    timm.is_model = lambda name: name == "convnext_atto"
    timm.list_models = lambda: ["convnext_atto", "convnext_femto"]
    timm.create_model = calls.recorder("timm.create_model")
    transformers = types.ModuleType("transformers")
    transformers.AutoConfig = types.SimpleNamespace(from_pretrained=calls.recorder("AutoConfig.from_pretrained", "cfg"))
    for cls in ("AutoModel", "AutoModelForSequenceClassification"):
        recorders = {m: calls.recorder(f"{cls}.{m}") for m in ("from_config", "from_pretrained")}
        setattr(transformers, cls, types.SimpleNamespace(**recorders))
    for name, module in (("torchvision", torchvision), ("torchvision.models", models), ("timm", timm),
                         ("transformers", transformers)):  # fmt: skip
        monkeypatch.setitem(sys.modules, name, module)
    return calls


@pytest.mark.parametrize(
    ("model", "args", "kwargs"),
    [
        ('torchvision = "resnet18"\noptions = { num_classes = 3 }', ("resnet18",), {"weights": None, "num_classes": 3}),
        ('torchvision = "fasterrcnn_resnet50_fpn"', ("fasterrcnn_resnet50_fpn",), {"weights": None,
                                                                                   "weights_backbone": None}),
        ('timm = "convnext_atto"\noptions = { num_classes = 3 }', ("convnext_atto",), {"num_classes": 3,
                                                                                       "pretrained": False}),
    ],
)  # fmt: skip
def test_torchvision_and_timm_models_are_built_without_pretrained_weights(study, zoo, model, args, kwargs):
    built = load_model(load_study_file(study(model=model)), None, quiet)
    assert isinstance(built, nn.Linear) and [call[1:] for call in zoo] == [(args, kwargs)]


def test_a_transformers_folder_with_weights_loads_them_from_disk_only(study, zoo, tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text("{}")
    (tmp_path / "bert" / "model.safetensors").write_bytes(b"")
    text = 'transformers = "bert"\noptions = { task = "sequence-classification", num_labels = 3 }'
    load_model(load_study_file(study(model=text)), None, quiet)
    assert zoo == [("AutoModelForSequenceClassification.from_pretrained", ("bert",),
                    {"local_files_only": True, "num_labels": 3})]  # fmt: skip


@pytest.mark.parametrize("location", ["tiny", "tiny/config.json"])
def test_a_transformers_config_builds_a_fresh_model(study, zoo, tmp_path, location):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text("{}")
    load_model(
        load_study_file(study(model=f'transformers = "{location}"\noptions = {{ hidden_size = 8 }}')), None, quiet
    )
    assert zoo == [
        ("AutoConfig.from_pretrained", (location,), {"local_files_only": True, "hidden_size": 8}),
        ("AutoModel.from_config", ("cfg",), {}),
    ]


def test_weights_load_into_a_zoo_model(study, zoo, tmp_path):
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "w.pt")
    model = load_model(load_study_file(study(model='torchvision = "resnet18"\nweights = "w.pt"')), None, quiet)
    assert torch.equal(model.weight, torch.load(tmp_path / "w.pt")["weight"])


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            'torchvision = "resnt18"',
            r"torchvision has no model 'resnt18'; did you mean 'resnet18'\?$",
        ),
        ('torchvision = "resnet18"\noptions = { weights = "DEFAULT" }', r"options.weights would download them: give"),
        (
            'timm = "convnext_atto"\noptions = { pretrained = true }',
            r"pretrained weights would be downloaded: give a l",
        ),
        ('timm = "hf-hub:timm/convnext_atto"', "pretrained weights would be downloaded"),
        ('timm = "convnext"', r"timm has no model 'convnext'; did you mean 'convnext_atto', 'convnext_femto'\?"),
        (
            'transformers = "bert-base-uncased"',
            r"'bert-base-uncased' does not exist: give a local folder written by sa",
        ),
        ('transformers = "."', r"'\.': '\.' holds no config.json: give a local folder"),
        ('transformers = "."\noptions = { task = "chat" }', r"options.task 'chat' is not one of sequence-classific"),
    ],
)
def test_zoo_mistakes_name_the_file_section_and_key(study, zoo, model, message):
    path = study(model=model)
    source = model.split(" ")[0]
    with pytest.raises(RanksearchError, match=rf"^{re.escape(str(path))}: \[model\] {source} .*{message}"):
        load_model(load_study_file(path), None, quiet)


@pytest.mark.parametrize(("source", "module"), [("torchvision", "torchvision"), ("timm", "timm"),
                                                ("transformers", "transformers")])  # fmt: skip
def test_a_missing_zoo_package_says_how_to_install_it(study, monkeypatch, source, module):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    path = study(model=f'{source} = "x"')
    message = rf"\[model\] {source} 'x': needs the {source} package, which is not installed: pip install -c constra"
    with pytest.raises(RanksearchError, match=message):
        load_model(load_study_file(path), None, quiet)


# --- a whole study --------------------------------------------------------------------------------------
def test_a_study_of_user_code_prepares_with_heuristic_warm_starts(study, code_settings):
    extra = '[evaluator]\nfinetune_steps = 1\nmetric = "{mod}:score"\n[study]\n'
    path = study(extra=extra.replace("[study]\n", ""))
    text = path.read_text().replace("[study]\n", "[study]\nwarm_start_heuristics = [0.5]\n")
    path.write_text(text)
    prepared = prepare(load_study_file(path), log=quiet)
    assert prepared.builtin is None and prepared.train_loader.batch_size == 64
    assert any("fixed_config" in trial.user_attrs for trial in prepared.search.study.trials)
    assert str(path.parent.resolve()) not in sys.path


def test_a_missing_metric_fails_before_the_study_opens(study, code_settings, tmp_path):
    path = study(extra='[evaluator]\nmetric = "{mod}:nothing"\n'.replace("{mod}", study.module))
    with pytest.raises(RanksearchError, match=rf"\[evaluator\] metric: module '{study.module}' has no attribute 'no"):
        prepare(load_study_file(path), log=quiet)
    assert not (tmp_path / "s.db").exists()
