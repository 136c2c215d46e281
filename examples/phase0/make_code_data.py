"""Build the Phase 0 code dataset: small contest-style problems with stdin/stdout tests and reference solutions.

    python examples/phase0/make_code_data.py [--out examples/phase0/data/code_contests.parquet]

Every problem was written for this project. Each has a statement, a reference solution (source text, stored in
``extra_info.reference_solution``) and a Python oracle in this file; the expected outputs come from the oracle, and
the tests check that every reference solution reproduces them in the sandbox, so the two implementations agree.

Columns (verl's RL parquet layout, so the file feeds ``main_generation_server`` and ``main_ppo`` alike):
``data_source`` (``phase0_code``), ``prompt`` (a one-message chat list), ``ability`` (``code``),
``reward_model`` (``{"style": "rule", "ground_truth": JSON of {"inputs": [...], "outputs": [...]}}``) and
``extra_info`` (``index``, ``name``, ``reference_solution``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections import Counter

DATA_SOURCE = "phase0_code"
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "code_contests.parquet")
INSTRUCTION = (
    "Read the input from standard input and write the answer to standard output. "
    "Reply with a complete Python 3 program in a single ```python code block."
)


def _fizzbuzz(n: int) -> str:
    words = {15: "FizzBuzz", 5: "Buzz", 3: "Fizz"}
    return "\n".join(next((w for d, w in words.items() if i % d == 0), str(i)) for i in range(1, n + 1)) + "\n"


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def _balanced(s: str) -> bool:
    stack, pairs = [], {")": "(", "]": "[", "}": "{"}
    for ch in s:
        if ch in "([{":
            stack.append(ch)
        elif not stack or stack.pop() != pairs[ch]:
            return False
    return not stack


def _fib_mod(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, (a + b) % 1_000_000_007
    return a


def _top_word(text: str) -> str:
    counts = Counter(text.split())
    word = min(counts, key=lambda w: (-counts[w], w))
    return f"{word} {counts[word]}\n"


# (name, statement, reference solution, oracle(stdin) -> stdout, test inputs)
PROBLEMS = [
    (
        "sum_of_two",
        "Given two integers a and b (|a|, |b| <= 10^18) on one line, print a + b.",
        "a, b = map(int, input().split())\nprint(a + b)\n",
        lambda s: f"{sum(map(int, s.split()))}\n",
        ["1 2\n", "-5 5\n", "1000000000000000000 1000000000000000000\n", "-7 -8\n"],
    ),
    (
        "maximum",
        "The first line holds n (1 <= n <= 10^5); the second holds n integers. Print the largest of them.",
        "input()\nprint(max(map(int, input().split())))\n",
        lambda s: f"{max(map(int, s.split(chr(10))[1].split()))}\n",
        ["3\n1 9 4\n", "1\n-3\n", "5\n-1 -2 -3 -4 -5\n", "4\n7 7 7 7\n"],
    ),
    (
        "reverse_words",
        "Print the words of the single input line in reverse order, separated by single spaces.",
        "print(' '.join(input().split()[::-1]))\n",
        lambda s: " ".join(s.split()[::-1]) + "\n",
        ["hello world\n", "a\n", "one two three four\n", "  spaced   out  words \n"],
    ),
    (
        "count_vowels",
        "Print how many characters of the single input line are vowels (a, e, i, o, u; either case).",
        "print(sum(ch in 'aeiou' for ch in input().lower()))\n",
        lambda s: f"{sum(ch in 'aeiou' for ch in s.rstrip(chr(10)).lower())}\n",
        ["Hello World\n", "rhythm\n", "AEIOU aeiou\n", "Programming Contest\n"],
    ),
    (
        "fizzbuzz",
        "Given n (1 <= n <= 100), print the numbers 1..n one per line, but Fizz for multiples of 3, Buzz for "
        "multiples of 5 and FizzBuzz for multiples of both.",
        "n = int(input())\nfor i in range(1, n + 1):\n"
        "    print('FizzBuzz' if i % 15 == 0 else 'Fizz' if i % 3 == 0 else 'Buzz' if i % 5 == 0 else i)\n",
        lambda s: _fizzbuzz(int(s)),
        ["1\n", "5\n", "15\n", "31\n"],
    ),
    (
        "primality",
        "The first line holds q; each of the next q lines holds an integer 1 <= x <= 10^9. For each x print YES if "
        "it is prime and NO otherwise.",
        "import math\nq = int(input())\nfor _ in range(q):\n    x = int(input())\n"
        "    ok = x >= 2 and all(x % d for d in range(2, math.isqrt(x) + 1))\n    print('YES' if ok else 'NO')\n",
        lambda s: "".join("YES\n" if _is_prime(int(x)) else "NO\n" for x in s.split()[1:]),
        ["3\n1\n2\n9\n", "2\n97\n100\n", "1\n999999937\n", "4\n4\n5\n6\n7\n"],
    ),
    (
        "gcd_and_lcm",
        "Given two positive integers a and b (<= 10^9), print gcd(a, b) and lcm(a, b) separated by a space.",
        "import math\na, b = map(int, input().split())\ng = math.gcd(a, b)\nprint(g, a // g * b)\n",
        lambda s: f"{math.gcd(*map(int, s.split()))} {math.lcm(*map(int, s.split()))}\n",
        ["4 6\n", "7 13\n", "12 12\n", "1000000000 999999999\n"],
    ),
    (
        "balanced_brackets",
        "The single input line is a string of the characters ()[]{} (possibly empty). Print YES if the brackets "
        "are balanced and properly nested, NO otherwise.",
        "s = input().strip()\nstack = []\npairs = {')': '(', ']': '[', '}': '{'}\nok = True\nfor ch in s:\n"
        "    if ch in '([{':\n        stack.append(ch)\n    elif not stack or stack.pop() != pairs[ch]:\n"
        "        ok = False\n        break\nprint('YES' if ok and not stack else 'NO')\n",
        lambda s: "YES\n" if _balanced(s.strip()) else "NO\n",
        ["()[]{}\n", "([)]\n", "{[()()]}\n", "((\n"],
    ),
    (
        "fibonacci_mod",
        "Given 0 <= n <= 10^5, print the n-th Fibonacci number (F(0) = 0, F(1) = 1) modulo 1000000007.",
        "n = int(input())\na, b = 0, 1\nfor _ in range(n):\n    a, b = b, (a + b) % 1000000007\nprint(a)\n",
        lambda s: f"{_fib_mod(int(s))}\n",
        ["0\n", "10\n", "90\n", "100000\n"],
    ),
    (
        "most_frequent_word",
        "Read all of standard input (words separated by whitespace, possibly over several lines). Print the most "
        "frequent word and its count; on a tie print the lexicographically smallest word.",
        "import sys\nfrom collections import Counter\nc = Counter(sys.stdin.read().split())\n"
        "w = min(c, key=lambda x: (-c[x], x))\nprint(w, c[w])\n",
        _top_word,
        ["b a b\n", "x y\nz x\n", "one\n", "the cat and the hat and the bat\n"],
    ),
]


def build_rows() -> list[dict]:
    rows = []
    for index, (name, statement, solution, oracle, inputs) in enumerate(PROBLEMS):
        tests = {"inputs": inputs, "outputs": [oracle(stdin) for stdin in inputs]}
        rows.append(
            {
                "data_source": DATA_SOURCE,
                "prompt": [{"role": "user", "content": f"{statement}\n\n{INSTRUCTION}"}],
                "ability": "code",
                "reward_model": {"style": "rule", "ground_truth": json.dumps(tests)},
                "extra_info": {"index": index, "name": name, "reference_solution": solution},
            }
        )
    return rows


def main() -> None:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"parquet to write (default {DEFAULT_OUT})")
    args = parser.parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    pd.DataFrame(build_rows()).to_parquet(args.out, index=False)
    print(f"wrote {len(PROBLEMS)} problems to {args.out}")


if __name__ == "__main__":
    main()
