"""Sandbox overhead: a batch of 100 trivial Python problems, and 100 trivial shell commands.

The baseline is the same 100 expressions evaluated in this process (no isolation), so the ratio
is the price of the sandbox. Last line: ``RESULT python_s_per_100=<s> shell_s_per_100=<s>``.
"""

from __future__ import annotations

import argparse

from _timing import timed  # bench/ is the script folder

from cycleqd.sandbox.box import Sandbox


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="(accepted: the run is small)")
    args = parser.parse_args()
    python = [{"code": f"sorted(xs)[:{i % 5}]", "cases": [{"xs": [3, 1, 2]}]} for i in range(100)]
    shell = [{"code": f"echo {i} | wc -c"} for i in range(100)]
    with Sandbox(workers=1) as box:
        t_python = timed(lambda: box.run("python", python), args.repeats)
        t_shell = timed(lambda: box.run("shell", shell), args.repeats)
    t_local = timed(lambda: [eval(p["code"], {}, p["cases"][0]) for p in python], args.repeats)
    print(
        f"100 python problems: {t_python:.3f} s in the sandbox, {t_local * 1e3:.2f} ms in "
        f"process; 100 shell commands: {t_shell:.3f} s"
    )
    print(f"RESULT python_s_per_100={t_python:.3f} shell_s_per_100={t_shell:.3f}")


if __name__ == "__main__":
    main()
