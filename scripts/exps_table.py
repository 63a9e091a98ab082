"""`make exps`'s table: `dvc exp show --csv` (the arguments pass through) printed with every number that is not a
whole one to DECIMALS decimals. DVC's own table gives 5 significant digits (0.32372 beside 1243.4) and ignores
--precision (DVC 3.x applies it to --csv only). Each column keeps its full name (train.k beside train.k_max); a
terminal (or COLUMNS) narrower than the table hides the last columns (…), a log gets them all."""

import csv
import shutil
import subprocess
import sys

DECIMALS = 4
GAP = "   "


def cell(value: str) -> str:
    """``value`` as shown: a number with a fraction to DECIMALS decimals (unless that would show 0), else as is."""
    try:
        number = float(value)
    except ValueError:
        return value or "-"
    return f"{number:.{DECIMALS}f}" if number != int(number) and abs(number) >= 10**-DECIMALS else value


def render(text: str, room: int) -> list[str]:
    """The lines of the table of ``dvc exp show --csv``'s ``text``, at most ``room`` characters wide."""
    header, *rows = csv.reader(text.splitlines())
    rev = header.index("rev") if "rev" in header else None  # the baseline's name (its Experiment cell is empty)
    keep = [i for i, name in enumerate(header) if i != rev]
    table = [[header[i] for i in keep]] + [
        [row[0] or (row[rev] if rev is not None else "HEAD"), *(cell(row[i]) for i in keep[1:])] for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(keep))]

    def span(n: int) -> int:  # the width of the first n columns, and of "   …" when some are hidden
        return sum(widths[:n]) + len(GAP) * (n - 1) + (len(GAP) + 1) * (n < len(widths))

    fit = next((n for n in range(len(widths), 1, -1) if span(n) <= room - 2), 1)  # 2: the indent
    lines = []
    for number, line in enumerate(table):
        cells = [c.rjust(w) if i and number and not c[-1:].isalpha() else c.ljust(w) for i, (c, w) in
                 enumerate(zip(line[:fit], widths, strict=False))] + (["…"] if fit < len(widths) else [])  # fmt: skip
        lines.append("  " + GAP.join(cells).rstrip())
        if not number:
            lines.append("  " + "─" * span(fit))
    return lines


def main(args: list[str]) -> int:
    shown = subprocess.run(["dvc", "exp", "show", "--no-pager", "--csv", *args], capture_output=True, text=True)
    if shown.returncode:
        sys.stderr.write(shown.stderr)
        return shown.returncode
    print("\n".join(render(shown.stdout, shutil.get_terminal_size((10**6, 24)).columns)))  # COLUMNS, the terminal's
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
