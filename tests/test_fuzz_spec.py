"""Fuzzing the Spec stage with ``hypothesis``: whatever a file or a claim contains, the
loader raises only ``SpecError`` and the claim parser only ``ClaimSyntaxError``, every
issue is one line that points inside the file, and the CLI turns them into exit 2.

Inputs: random YAML-ish text, line mutations of a valid hypothesis (deleted, duplicated,
swapped, re-indented, garbled lines), random values and keys put into its parsed tree
and dumped again (its search space too), and claims made of token soups or random
characters. About 11,000 inputs in all; the bugs these found are listed in the report
of issue 8 (tabs/aliases/tags/NUL bytes/.inf bounds/deep nesting...).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.claims import ClaimSyntaxError, parse_claim
from orchestrator.cli import main
from orchestrator.spec.errors import SpecError
from orchestrator.spec.loader import load_hypothesis


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=True
    )


VALID_SPACE = """\
method: lora
params:
  r: {type: categorical, choices: [2, 4, 8]}
  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  lora_dropout: {type: float, low: 0.0, high: 0.2, step: 0.05, when: {r: [4, 8]}}
defaults: {r: 4, lr: 1.0e-3}
"""

VALID = """\
name: fuzz-me
statement: a valid hypothesis that the fuzzer breaks
source: tests
task:
  model: random:bert-tiny
  dataset: synthetic:polarity
  max_length: 32
  train_examples: 160
arms:
  small: {method: lora, space: space.yaml, fixed: {r: 2}}
  large: {method: lora, fixed: {r: 8}}
training: {epochs: 1, batch_size: 32, lr: 1.0e-2}
search:
  sampler: tpe
  objectives: {val_accuracy: max, flops_ratio: min}
  constraints: ["all: flops_ratio <= 2", "small: trainable_params <= 100000"]
  trials_per_arm: 2
  scheduler: fifo
  resources_per_trial: {cpu: 1, gpu: 0}
confirm: {seeds: 2, split: test}
expected:
  - small.flops_ratio <= large.flops_ratio / 2
  - small.test_accuracy >= large.test_accuracy - 0.5
  - small.test_accuracy within 0.1 of large.test_accuracy
judge: {confidence: 0.95}
profiles:
  smoke: {training: {epochs: 1}, "expected+": ["small.test_accuracy in [0.4, 1]"]}
"""


#: inputs tried per fuzz test (reported by the last test of this file)
TRIED: dict[str, int] = {}


def tried(kind: str, n: int = 1) -> None:
    TRIED[kind] = TRIED.get(kind, 0) + n


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as name:
        path = Path(name)
        (path / "space.yaml").write_text(VALID_SPACE)
        yield path


def check_loader(folder: Path, text: str | bytes, space: str | None = None) -> list[str]:
    """Load ``text`` as a hypothesis; only SpecError may escape, and its issues must be
    one line each and point inside the file they name. Returns the issue strings."""
    path = folder / "hypothesis.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    (folder / "space.yaml").write_text(space if space is not None else VALID_SPACE, errors="surrogatepass")
    try:
        load_hypothesis(path)
    except SpecError as exc:
        assert exc.issues
        for issue in exc.issues:
            assert "\n" not in str(issue), str(issue)
            if issue.line is not None:
                lines = Path(issue.file).read_bytes().count(b"\n") + 1 if Path(issue.file).is_file() else 1
                assert 1 <= issue.line <= lines, str(issue)
        return [str(i) for i in exc.issues]
    return []


def test_the_valid_hypothesis_is_valid(folder):
    assert check_loader(folder, VALID) == []


# -- 1. random YAML-ish text ---------------------------------------------------------

YAML_PIECES = [
    "name: ",
    "statement: ",
    "arms:",
    "task:",
    "search:",
    "training:",
    "profiles:",
    "expected:",
    "small: ",
    "{method: lora}",
    "method: ",
    "lora",
    "fixed: ",
    "{r: 2}",
    "space: ",
    "space.yaml",
    "\n",
    "\n  ",
    "\n    ",
    "\t",
    " ",
    "- ",
    ": ",
    ":",
    "[",
    "]",
    "{",
    "}",
    ", ",
    "#",
    "&a ",
    "*a",
    "<<: ",
    "!!python/object:os.system ",
    "!!float ",
    "!!binary ",
    "!tag ",
    "|\n  ",
    ">\n  ",
    "'",
    '"',
    "---\n",
    "...\n",
    "? ",
    "%YAML 1.1\n",
    "1",
    "-1",
    "1e999",
    ".nan",
    ".inf",
    "~",
    "null",
    "yes",
    "2020-01-01",
    "0x1F",
    "\\",
    "\x00",
    "\x85",
    "\ufeff",
    "é",
]


YAMLISH = st.one_of(
    st.lists(st.sampled_from(YAML_PIECES), max_size=40).map("".join),
    st.text(alphabet=st.sampled_from(list("ab:-[]{},#&*!|>'\"\n\t %@`?~0123456789.eE+\\")), max_size=120),
    st.binary(max_size=80),
)


@pytest.mark.slow
@fuzz(400)
@given(st.lists(YAMLISH, min_size=4, max_size=4))
def test_random_yamlish_text_only_raises_spec_error(folder, texts):
    for text in texts:  # four inputs per example: hypothesis's own cost per example dominates here
        check_loader(folder, text)
        tried("yaml-ish text")


# -- 2. line mutations of a valid hypothesis ------------------------------------------


def _garble(line: str, data: st.DataObject) -> str:
    pos = data.draw(st.integers(0, len(line)))
    junk = data.draw(st.text(alphabet=st.sampled_from(list(":-[]{},#&*!'\" \tabc019.")), min_size=1, max_size=4))
    if data.draw(st.booleans()):
        return line[:pos] + junk + line[pos:]
    return line[:pos] + junk + line[pos + len(junk) :]


@st.composite
def mutated_lines(draw: Any, source: str) -> str:
    lines = source.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "indent", "dedent", "garble", "garble"]))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "indent":
            lines[i] = draw(st.sampled_from([" ", "  ", "\t", "    "])) + lines[i]
        elif op == "dedent":
            lines[i] = lines[i].lstrip()
        else:
            lines[i] = _garble(lines[i], draw(st.data()))
    return "\n".join(lines) + "\n"


@pytest.mark.slow
@fuzz(400)
@given(st.one_of(mutated_lines(VALID).map(lambda t: (t, None)), mutated_lines(VALID_SPACE).map(lambda t: (VALID, t))))
def test_mutated_lines_only_raise_spec_error(folder, texts):
    hypothesis, space = texts
    check_loader(folder, hypothesis, space)
    tried("line mutations")


# -- 3. random values and keys in the parsed tree, dumped again -----------------------

INTERESTING_TEXT = [
    "",
    " ",
    "lora",
    "lorra",
    "os.system",
    "methods.lora:LoRA",
    "__import__('os')",
    "../../etc/passwd",
    "/dev/zero",
    "space.yaml",
    "search_spaces/lora.yaml",
    "a\x00b",
    "x" * 300,
    "val_accuracy",
    "test_accuracy",
    "flops_ratio",
    "max",
    "min",
    "tpe",
    "grid",
    "cmaes",
    "asha",
    "small",
    "large",
    "small.test_accuracy >= 0.5",
    "small.x * large.y <= 1",
    "((((((1))))))",
    "all: flops_ratio <= 1",
    "nope: val_loss <= 1",
    "r",
    "lr",
    "int",
    "float",
    "categorical",
    "expected+",
    "embedded:rotten-tomatoes",
    "csv:",
    "random:bert-h64-l4",
    "\u2212",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.integers(-3, 40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1e-3, 0.5, 1.0, 1e300]),
    st.sampled_from(INTERESTING_TEXT),
    st.text(max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)
KEYS = st.one_of(
    st.sampled_from(
        [
            "epochs",
            "r",
            "method",
            "space",
            "fixed",
            "when",
            "low",
            "high",
            "choices",
            "type",
            "log",
            "step",
            "profiles",
            "expected+",
            "name+",
            "search",
            "cpu",
            "gpu",
            "seeds",
        ]
    ),
    st.text(max_size=8),
    st.integers(-2, 2),
)


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(tree, dict):
        for key, value in tree.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            out += _paths(value, prefix + (index,))
    return out


def _set(tree: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    parent = tree
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    return tree


@st.composite
def mutated_tree(draw: Any, source: str) -> str:
    tree = yaml.safe_load(source)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(tree)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["value", "value", "value", "key", "drop"]))
        if action == "value" or not path:
            tree = _set(tree, path, draw(VALUES))
            continue
        parent = tree
        for part in path[:-1]:
            parent = parent[part]
        if isinstance(parent, dict):
            value = parent.pop(path[-1])
            if action == "key":
                parent[draw(KEYS)] = value
        elif isinstance(parent, list):
            parent.pop(path[-1])
    return yaml.safe_dump(tree, allow_unicode=True, sort_keys=False, width=1000)


@pytest.mark.slow
@fuzz(300)
@given(st.one_of(mutated_tree(VALID).map(lambda t: (t, None)), mutated_tree(VALID_SPACE).map(lambda t: (VALID, t))))
def test_mutated_values_only_raise_spec_error(folder, texts):
    hypothesis, space = texts
    check_loader(folder, hypothesis, space)
    tried("tree mutations")


# -- 4. the CLI maps every loader outcome to exit 0 or 2 ---------------------------------


@fuzz(100)
@given(
    st.one_of(
        mutated_lines(VALID), mutated_tree(VALID), st.lists(st.sampled_from(YAML_PIECES), max_size=30).map("".join)
    )
)
def test_cli_validate_exits_2_exactly_when_the_loader_refuses(folder, text):
    issues = check_loader(folder, text)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["validate", str(folder / "hypothesis.yaml")])
    assert code == (2 if issues else 0)
    assert err.getvalue().splitlines() == issues
    assert "Traceback" not in err.getvalue()
    tried("CLI validate")


# -- 5. the claim parser --------------------------------------------------------------

CLAIM_TOKENS = [
    "small.test_accuracy",
    "large.flops_ratio",
    "a.b",
    "a.",
    ".b",
    "a.b.c",
    "x",
    "_",
    "1",
    "0",
    "0.5",
    ".5",
    "5.",
    "1e-3",
    "2.5E+2",
    "25%",
    "%",
    "1e999",
    "1e308",
    "1e-400",
    "+",
    "-",
    "\u2212",
    "*",
    "/",
    "(",
    ")",
    "[",
    "]",
    ",",
    "<",
    "<=",
    ">",
    ">=",
    "=",
    "==",
    "!=",
    "=<",
    "=>",
    "<>",
    "\u2264",
    "\u2265",
    "in",
    "within",
    "of",
    "and",
    "é",
    "\t",
    "",
]


def check_claim(text: str) -> None:
    try:
        claim = parse_claim(text)
    except ClaimSyntaxError as exc:
        assert 1 <= exc.column <= len(text) + 1, (text, exc.column)
        assert str(exc) and exc.message and "\n" not in exc.message
        return
    refs = claim.references()
    assert refs, text
    numbers = [claim.expr.constant, *claim.expr.coefficients.values(), claim.lower or 0.0, claim.upper or 0.0]
    assert all(math.isfinite(x) for x in numbers), text
    assert claim.lower is not None or claim.upper is not None
    assert next(iter(claim.expr.coefficients.values())) > 0  # oriented
    if claim.kind == "compare":  # the canonical form parses back to the same claim
        again = parse_claim(claim.canonical())
        assert (again.lower, again.upper, again.lower_strict, again.upper_strict) == (
            claim.lower,
            claim.upper,
            claim.lower_strict,
            claim.upper_strict,
        )
        assert again.expr.constant == pytest.approx(claim.expr.constant, rel=1e-9, abs=1e-12)
        assert dict(again.expr.coefficients) == pytest.approx(dict(claim.expr.coefficients), rel=1e-9)


SOUP = st.tuples(st.lists(st.sampled_from(CLAIM_TOKENS), max_size=14), st.sampled_from([" ", ""])).map(
    lambda ts: ts[1].join(ts[0])
)
CLAIM_LIKE = st.text(alphabet=st.sampled_from(list("ab._ 0123456789e%+-*/()[],<>=≤≥")), max_size=60)


@fuzz(350)
@given(st.lists(SOUP, min_size=15, max_size=15))
def test_claim_token_soups_only_raise_claim_syntax_error(claims):
    for text in claims:  # 15 claims per example: parsing costs ~0.1 ms, an example far more
        check_claim(text)
        tried("claim token soups")


@fuzz(200)
@given(st.lists(st.one_of(st.text(max_size=60), CLAIM_LIKE), min_size=15, max_size=15))
def test_random_claim_strings_only_raise_claim_syntax_error(claims):
    for text in claims:
        check_claim(text)
        tried("random claim strings")


def test_claim_parser_handles_deep_nesting_and_huge_numbers():
    for text in [
        "a.b <= " + "(" * 5000 + "1" + ")" * 5000,
        "a.b <= " + "- " * 5000 + "1",
        "a.b * 1e300 * 1e300 <= 1",
        "a.b in [1e999, 2e999]",
    ]:
        with pytest.raises(ClaimSyntaxError):
            parse_claim(text)
    assert parse_claim("a.b <= " + "(" * 50 + "1" + ")" * 50).upper == 0.0


def test_valid_hypothesis_survives_a_round_trip_through_the_dumper(folder):
    """The tree mutator's baseline: re-dumping the valid file keeps it valid."""
    assert check_loader(folder, yaml.safe_dump(copy.deepcopy(yaml.safe_load(VALID)), sort_keys=False)) == []


def test_zz_fuzz_inputs_tried():
    """Runs last in this file: how many inputs the fuzz tests above tried."""
    total = sum(TRIED.values())
    print(f"fuzz inputs tried: {total} ({', '.join(f'{k} {v}' for k, v in TRIED.items())})")
    if len(TRIED) == 6:  # every fuzz test ran (none deselected with -m "not slow")
        assert total >= 10_000
