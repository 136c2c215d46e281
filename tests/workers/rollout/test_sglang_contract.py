"""The SGLang adapter against SGLang 0.5.23's own source, read without importing it (no CUDA needed).

``pip install --no-deps --target .cache/sglang-src sglang==0.5.23`` (``scripts/install.sh --extras test`` does it) puts
the package's source beside the repository; an installed ``sglang`` or ``VERL_SGLANG_SOURCE=<dir holding sglang/>``
works too. From ``sglang/srt/entrypoints/engine.py`` (``Engine``), ``server_args`` fields, ``SamplingParams`` and the
``meta_info`` keys ``tokenizer_manager.py`` writes, the checks are:

* every ``self.engine.<method>`` our adapter uses exists on ``Engine``; it is awaited exactly when it is an
  ``async def``; its keyword arguments are parameters of the real method; a method that runs SGLang's own event loop
  (``self.loop.run_until_complete``) is never called directly inside a coroutine (it goes through ``_blocking`` or a
  worker thread);
* the request (``sglang_generate_kwargs``) only uses ``Engine.generate`` parameters and ``SamplingParams`` fields, the
  engine arguments (``sglang_server_kwargs``) only ``ServerArgs`` fields;
* the ``meta_info`` keys we read, and every key the test double writes, are keys SGLang writes;
* the double (``sglang_double.py``) has only real methods, with the real ``async``-ness and parameters, and fails
  inside a running loop exactly for the methods that run SGLang's loop;
* the checker itself fails on a misspelt method and on an awaited blocking call (mutations of our source).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from verl.workers.config import RolloutConfig
from verl.workers.rollout.engine import SamplingParams
from verl.workers.rollout.logit_capture import CaptureSpec
from verl.workers.rollout.sglang_rollout import adapter as adapter_module
from verl.workers.rollout.sglang_rollout.adapter import sglang_generate_kwargs, sglang_server_kwargs

REPO = Path(__file__).resolve().parents[3]
VERSION = "0.5.23"

_spec = importlib.util.spec_from_file_location("sglang_double", Path(__file__).with_name("sglang_double.py"))
sglang_double = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sglang_double)


def _sglang_source() -> Path | None:
    candidates = []
    if os.environ.get("VERL_SGLANG_SOURCE"):
        candidates.append(Path(os.environ["VERL_SGLANG_SOURCE"]))
    spec = importlib.util.find_spec("sglang")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent.parent)
    candidates.append(REPO / ".cache" / "sglang-src")
    return next((c for c in candidates if (c / "sglang" / "srt" / "entrypoints" / "engine.py").is_file()), None)


SOURCE = _sglang_source()
pytestmark = pytest.mark.skipif(
    SOURCE is None,
    reason=f"SGLang's source is not here: pip install --no-deps --target .cache/sglang-src sglang=={VERSION}",
)


# ---------------------------------------------------------------------------------------------- reading the source
@dataclass(frozen=True)
class Method:
    name: str
    is_async: bool
    params: frozenset[str]
    var_keyword: bool
    runs_own_loop: bool


def _parse(relative: str) -> ast.Module:
    return ast.parse((SOURCE / "sglang" / relative).read_text())


def engine_methods() -> dict[str, Method]:
    """``sglang.Engine``'s methods (its own and those of its bases in the package)."""
    tree = _parse("srt/entrypoints/engine.py")
    methods: dict[str, Method] = {}
    engine = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Engine")
    classes = [engine]
    for base in engine.bases:  # EngineScoreMixin, EngineBase: same package
        name = ast.unparse(base)
        for path in (SOURCE / "sglang" / "srt" / "entrypoints").glob("*.py"):
            found = [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.ClassDef) and n.name == name]
            classes.extend(found)
    for cls in reversed(classes):  # Engine's own definitions win
        for node in cls.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs][1:]  # without self
                methods[node.name] = Method(
                    node.name,
                    isinstance(node, ast.AsyncFunctionDef),
                    frozenset(names),
                    args.kwarg is not None,
                    "run_until_complete" in ast.unparse(node),
                )
    return methods


def _annotated_fields(paths: list[Path], class_name: str | None = None) -> set[str]:
    fields = set()
    for path in paths:
        for cls in ast.walk(ast.parse(path.read_text())):
            if isinstance(cls, ast.ClassDef) and (class_name is None or cls.name == class_name):
                fields |= {s.target.id for s in cls.body if isinstance(s, ast.AnnAssign) and hasattr(s.target, "id")}
    return fields


def server_args_fields() -> set[str]:
    return _annotated_fields(sorted((SOURCE / "sglang" / "srt" / "arg_groups" / "fields").glob("*.py")))


def sampling_params_fields() -> set[str]:
    return _annotated_fields([SOURCE / "sglang" / "srt" / "sampling" / "sampling_params.py"], "SamplingParams")


def meta_info_keys() -> set[str]:
    """Keys ``tokenizer_manager.py`` writes into ``meta_info``: subscript assignments, the dict it starts from and
    the dicts merged into it."""
    keys: set[str] = set()
    for node in ast.walk(_parse("srt/managers/tokenizer_manager.py")):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if (
                    isinstance(target, ast.Subscript)
                    and ast.unparse(target.value) == "meta_info"
                    and isinstance(target.slice, ast.Constant)
                ):
                    keys.add(target.slice.value)
                if isinstance(target, ast.Name) and target.id == "meta_info" and isinstance(node.value, ast.Dict):
                    keys |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
        if (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) == "meta_info.update"
            and node.args
            and isinstance(node.args[0], ast.Dict)
        ):
            keys |= {k.value for k in node.args[0].keys if isinstance(k, ast.Constant)}
    return keys


def finish_reason_types() -> set[str]:
    types = set()
    for node in ast.walk(_parse("srt/managers/schedule_batch.py")):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "type" and isinstance(v, ast.Constant):
                    types.add(v.value)
    return types


# ---------------------------------------------------------------------------------------------- reading our adapter
@dataclass(frozen=True)
class Use:
    method: str
    awaited: bool
    keywords: frozenset[str]
    through_blocking: bool
    in_coroutine: bool
    line: int


def engine_uses(source: str) -> list[Use]:
    """Every ``self.engine.<method>`` in the classes that hold an ``sglang.Engine`` as ``self.engine``
    (``SGLangEngine``, and any class a mutation adds): called directly, or handed to ``_blocking``."""
    tree = ast.parse(source)
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    holders = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in ("SGLangEngine", "Mutant")]
    uses = []
    for node in (n for holder in holders for n in ast.walk(holder)):
        if not (isinstance(node, ast.Attribute) and ast.unparse(node.value) == "self.engine"):
            continue
        parent = parents.get(node)
        function = parent
        while function is not None and not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = parents.get(function)
        in_coroutine = isinstance(function, ast.AsyncFunctionDef)
        if isinstance(parent, ast.Call) and parent.func is node:
            call, blocking = parent, False
        elif isinstance(parent, ast.Call) and ast.unparse(parent.func) == "_blocking" and parent.args[0] is node:
            call, blocking = parent, True
        else:
            continue  # an attribute read, not a call (hasattr checks and the like)
        keywords = frozenset(k.arg for k in call.keywords if k.arg is not None)
        awaited = isinstance(parents.get(call), ast.Await)
        uses.append(Use(node.attr, awaited, keywords, blocking, in_coroutine, node.lineno))
    return uses


def contract_problems(source: str, methods: dict[str, Method]) -> list[str]:
    problems = []
    for use in engine_uses(source):
        where = f"adapter line {use.line}: engine.{use.method}"
        method = methods.get(use.method)
        if method is None:
            problems.append(f"{where}: sglang.Engine has no such method")
            continue
        if use.awaited != method.is_async:
            kind = "an async def" if method.is_async else "a plain method"
            problems.append(f"{where}: {'awaited' if use.awaited else 'not awaited'}, but it is {kind}")
        unknown = use.keywords - method.params
        if unknown and not method.var_keyword:
            problems.append(f"{where}: keyword(s) {sorted(unknown)} are not parameters of the real method")
        if method.runs_own_loop and use.in_coroutine and not use.through_blocking:
            problems.append(f"{where}: runs SGLang's event loop, called directly inside a coroutine")
    return problems


ADAPTER_SOURCE = Path(inspect.getsourcefile(adapter_module)).read_text()


# ---------------------------------------------------------------------------------------------- the tests
def test_the_source_is_the_pinned_version():
    version = (SOURCE / "sglang" / "_version.py").read_text()
    assert f"__version__ = version = '{VERSION}'" in version or f'"{VERSION}"' in version, version[-400:]


def test_every_engine_call_of_the_adapter_matches_the_real_engine():
    methods = engine_methods()
    uses = engine_uses(ADAPTER_SOURCE)
    used = {u.method for u in uses}
    # the calls this rollout depends on are all seen by the checker
    assert {"generate", "update_weights_from_tensor", "flush_cache"} <= used, used
    assert {"release_memory_occupation", "resume_memory_occupation"} <= used, used
    assert contract_problems(ADAPTER_SOURCE, methods) == []
    # SGLang's blocking methods run its event loop: what _blocking and the worker thread exist for
    assert all(methods[m].runs_own_loop for m in ("generate", "update_weights_from_tensor", "flush_cache"))
    assert methods["async_generate"].is_async and not methods["generate"].is_async


def test_the_checker_fails_on_a_misspelt_method_and_on_an_awaited_blocking_call():
    methods = engine_methods()
    misspelt = ADAPTER_SOURCE.replace(
        "self.engine.update_weights_from_tensor", "self.engine.update_weights_from_tensors"
    )
    assert any(
        "update_weights_from_tensors: sglang.Engine has no such method" in p
        for p in contract_problems(misspelt, methods)
    )
    awaited = ADAPTER_SOURCE + (
        "\n\nclass Mutant:\n    async def flush(self):\n        await self.engine.flush_cache()\n"
        "\n    async def sync(self):\n        self.engine.update_weights_from_tensor(named_tensors=[], flush_cache=False)\n"
        "\n    def generate(self):\n        self.engine.generate(input_ids=[[1]], return_logprobs=True)\n"
    )
    problems = contract_problems(awaited, methods)
    assert any("engine.flush_cache: awaited, but it is a plain method" in p for p in problems), problems
    assert any(
        "update_weights_from_tensor: runs SGLang's event loop, called directly inside a coroutine" in p
        for p in problems
    ), problems
    assert any("keyword(s) ['return_logprobs'] are not parameters" in p for p in problems), problems


def test_requests_use_only_real_generate_parameters_and_sampling_fields():
    methods = engine_methods()
    prompts = [[1, 2, 3], [4, 5]]
    captures = [CaptureSpec("topk", k=3), CaptureSpec("token_ids", ids=(7, 9))]
    params = [SamplingParams(8, 0.7, top_p=0.9, top_k=5, seed=3, stop_token_ids=(2,), capture=c) for c in captures]
    request = sglang_generate_kwargs(prompts, params, vocab_size=512, seeded=True)
    assert set(request) <= methods["generate"].params, set(request) - methods["generate"].params
    fields = sampling_params_fields()
    for row in request["sampling_params"]:
        assert set(row) <= fields, set(row) - fields
    assert "sampling_seed" in request["sampling_params"][0]  # sent only to a deterministic engine


def test_engine_arguments_are_server_args_fields():
    kwargs = sglang_server_kwargs("/models/x", RolloutConfig(name="sglang"), seed=1, trust_remote_code=False)
    fields = server_args_fields()
    assert "model_path" in fields and "enable_deterministic_inference" in fields
    assert set(kwargs) <= fields, set(kwargs) - fields


def test_the_meta_info_we_read_and_the_double_writes_is_what_sglang_writes():
    written = meta_info_keys()
    read = {"output_token_logprobs", "output_top_logprobs", "output_token_ids_logprobs", "finish_reason"}
    ours = ADAPTER_SOURCE + Path(inspect.getsourcefile(CaptureSpec)).read_text()
    assert all(f'"{key}"' in ours for key in read), "the list above must name what the code reads"
    assert read <= written, read - written
    import torch

    response = sglang_double.sglang_response(
        "r0", [1, 2], [5, 6], torch.zeros(2, 16), 1.0, {"type": "length", "length": 2}, True, 3, [4, 7]
    )
    assert set(response) == {"output_ids", "meta_info"}
    assert set(response["meta_info"]) <= written, set(response["meta_info"]) - written
    assert {"stop", "length", "abort"} <= finish_reason_types()


def test_the_double_has_the_real_methods_and_fails_where_sglang_fails():
    methods = engine_methods()
    double = sglang_double.SGLangEngineDouble
    public = {n: f for n, f in vars(double).items() if callable(f) and not n.startswith("_")}
    for name, function in public.items():
        assert name in methods, f"the double invents Engine.{name}"
        real = methods[name]
        assert inspect.iscoroutinefunction(function) == real.is_async, name
        params = set(inspect.signature(function).parameters) - {"self"}
        assert params <= real.params or real.var_keyword, (name, params - real.params)
    loop_runners = {name for name in public if methods[name].runs_own_loop}
    assert loop_runners == set(sglang_double.RUNS_OWN_LOOP), loop_runners ^ set(sglang_double.RUNS_OWN_LOOP)
