#!/usr/bin/env bash
# Runs every check of the project and ends with one line "N passed, N failed[, N skipped]".
#
#   bash tests/run_all_tests.sh            # installs what is missing (quick when installed), then runs everything
#   bash tests/run_all_tests.sh -k dataproto   # extra arguments go to pytest
#
# Checks: ruff lint + format, the standalone scripts (quick_test.py and, when present, the logit-capture scripts),
# then the pytest suite. Each standalone check counts as one test (a script's own "Total: X/Y tests passed" line is
# shown under it); pytest's own counts are added.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
LOGDIR="$(mktemp -d)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
export TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0 TORCH_COMPILE_DISABLE=1
export RUFF_CACHE_DIR="$LOGDIR/ruff-cache"  # tools keep their caches out of the checkout too

if ! bash scripts/install.sh > "$LOGDIR/install.log" 2>&1; then
  cat "$LOGDIR/install.log"
  echo "install failed"
  echo "0 passed, 1 failed"
  exit 1
fi
tail -1 "$LOGDIR/install.log"

passed=0; failed=0; skipped=0
failures=()
log_of() { echo "$LOGDIR/$(echo "$1" | tr -c 'a-zA-Z0-9_' '_').log"; }
check() {  # check NAME CMD...: run a standalone check, count it, show its tail on failure
  local name="$1"; shift
  local log; log="$(log_of "$name")"
  local t0=$SECONDS
  if "$@" > "$log" 2>&1; then
    passed=$((passed + 1)); printf 'PASS  %-45s %4ds\n' "$name" $((SECONDS - t0))
  else
    failed=$((failed + 1)); failures+=("$name"); printf 'FAIL  %-45s %4ds\n' "$name" $((SECONDS - t0))
    tail -40 "$log" | sed 's/^/      | /'
  fi
}

checkout_files() {  # untracked and ignored files of the checkout (bytecode caches aside): tests must not add any
  git -C "$ROOT" status --porcelain --ignored --untracked-files=all 2>/dev/null | grep -v -e '__pycache__/' -e '\.pyc$' | sort
}
checkout_before="$(checkout_files)"

echo "== static checks"
check "ruff check" "$PY" -m ruff check .
check "ruff format --check" "$PY" -m ruff format --check .

echo "== standalone scripts"
for script in tests/quick_test.py tests/test_sglang_rollout_with_logit.py tests/integration_test_logit_flow.py; do
  [[ -f "$script" ]] || continue
  check "$script" "$PY" "$script"
  summary="$(grep -E '^Total: [0-9]+/[0-9]+ tests passed' "$(log_of "$script")" | tail -1)"
  [[ -n "$summary" ]] && echo "      $summary"
done

echo "== the newest transformers"
# setup.py accepts any transformers >= 4.51 while CI pins one (scripts/constraints.txt); the hf decode loop, the chat
# templates and the tiny model builder are also run against the newest release in a throw-away venv.
NEWEST_TRANSFORMERS=5.25.0
TF_VENV="$LOGDIR/transformers-$NEWEST_TRANSFORMERS"
if "$PY" -m venv --system-site-packages "$TF_VENV" > /dev/null 2>&1 &&
  "$TF_VENV/bin/python" -m pip install -q --disable-pip-version-check \
    -c <(echo "torch==$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')") \
    "transformers==$NEWEST_TRANSFORMERS" > "$LOGDIR/transformers-install.log" 2>&1; then
  check "hf paths on transformers $NEWEST_TRANSFORMERS" "$TF_VENV/bin/python" -m pytest -q -p no:cacheprovider \
    -m "not vllm and not gpu" tests/workers/rollout/test_hf_rollout.py tests/workers/rollout/test_multiturn.py \
    tests/utils/dataset/test_spd_dataset.py tests/utils/test_tiny_model.py
  summary="$(grep -E '^[0-9]+ passed' "$(log_of "hf paths on transformers $NEWEST_TRANSFORMERS")" | tail -1)"
  [[ -n "$summary" ]] && echo "      $summary"
else  # no package index here (offline): an environment limit, not a test result
  skipped=$((skipped + 1))
  printf 'SKIP  %-45s (transformers==%s could not be installed: %s)\n' "hf paths on transformers $NEWEST_TRANSFORMERS" \
    "$NEWEST_TRANSFORMERS" "$(tail -1 "$LOGDIR/transformers-install.log" 2>/dev/null | cut -c1-80)"
fi

echo "== pytest suite"
export VERL_TEST_PROGRESS_FILE="$LOGDIR/current_test"
"$PY" -m pytest tests -q -p no:cacheprovider --timeout=900 --junitxml="$LOGDIR/junit.xml" "$@" 2>&1 | tee "$LOGDIR/pytest.log"
rc=${PIPESTATUS[0]}
if [[ -f "$LOGDIR/junit.xml" && $rc -le 2 ]]; then  # 2: interrupted (e.g. a collection error), still reported
  "$PY" - "$LOGDIR/junit.xml" > "$LOGDIR/junit.txt" <<'PYEOF'
import sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
tests = sum(int(s.get("tests", 0)) for s in suites)
fail = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
skip = sum(int(s.get("skipped", 0)) for s in suites)
print(tests - fail - skip, fail, skip)
for case in root.iter("testcase"):
    for bad in list(case.findall("failure")) + list(case.findall("error")):
        cls, test = case.get("classname", ""), case.get("name", "")
        name = f"{cls.replace('.', '/')}.py::{test}" if cls else test
        first = (bad.get("message") or "").strip().splitlines()
        print(f"pytest: {name} ({bad.tag}: {first[0][:150] if first else '?'})")
PYEOF
  if read -r p f s < "$LOGDIR/junit.txt" && [[ "$p$f$s" =~ ^[0-9]+$ ]]; then
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    while IFS= read -r line; do failures+=("$line"); done < <(tail -n +2 "$LOGDIR/junit.txt")
    if [[ $rc -ne 0 && $f -eq 0 ]]; then  # pytest said "failed" but the report names nothing: count it anyway
      failed=$((failed + 1)); failures+=("pytest exited $rc (see $LOGDIR/pytest.log)")
    fi
  else
    failed=$((failed + 1)); failures+=("pytest's JUnit report could not be read (exit $rc)")
  fi
elif [[ $rc -ne 5 ]]; then
  # pytest did not finish: name the test it was running, why it stopped, and the last lines it printed.
  failed=$((failed + 1))
  how="exit $rc"
  [[ $rc -gt 128 ]] && how="killed by signal $((rc - 128)) ($(kill -l $((rc - 128)) 2>/dev/null || echo '?'))"
  current="$(cat "$VERL_TEST_PROGRESS_FILE" 2>/dev/null || echo 'before the first test')"
  failures+=("pytest died ($how) while running $current")
  echo "!! pytest died ($how) while running: $current"
  echo "!! its last 40 lines:"; tail -40 "$LOGDIR/pytest.log" | sed 's/^/   | /'
  [[ -f "$VERL_TEST_PROGRESS_FILE.exit" ]] && tail -25 "$VERL_TEST_PROGRESS_FILE.exit" | sed 's/^/!! /'
  for ray_log in /tmp/ray/session_latest/logs/raylet.out /tmp/ray/session_latest/logs/gcs_server.out; do
    [[ -f "$ray_log" ]] || continue
    echo "!! last lines of $ray_log:"; tail -8 "$ray_log" | sed 's/^/   | /'
  done
  dmesg 2>/dev/null | grep -i -E 'out of memory|killed process' | tail -3 | sed 's/^/!! kernel: /'
fi

checkout_after="$(checkout_files)"
added="$(comm -13 <(echo "$checkout_before") <(echo "$checkout_after"))"
if [[ -n "$added" ]]; then
  failed=$((failed + 1)); failures+=("the tests left files in the checkout (they must write under temporary folders)")
  echo "!! files the tests left in the checkout:"; echo "$added" | head -20 | sed 's/^/   | /'
fi

echo "== summary"
for item in "${failures[@]+"${failures[@]}"}"; do echo "  failed: $item"; done
if [[ $failed -eq 0 ]]; then
  rm -rf "$LOGDIR"
else
  echo "  logs kept in $LOGDIR (pytest.log: the whole pytest output)"
fi
echo "$passed passed, $failed failed, $skipped skipped"
[[ $failed -eq 0 ]]
