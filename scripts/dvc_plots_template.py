"""Write DVC's plots page template with vega, vega-lite and vega-embed inline (offline plots).

DVC's default page for `dvc plots show` loads the three libraries from cdn.jsdelivr.net, so
without internet it stays blank. Snakemake's package ships builds of the same libraries for its
own report (snakemake/assets/data); this script inlines them, with their licences, into the
template that .dvc/config's `plots.html_template` names. The page it leads to loads nothing
from the network. `make install` runs it: the ~2 MB output is generated from the installed
packages rather than committed (git-ignored in .dvc/.gitignore).

    python scripts/dvc_plots_template.py [--out .dvc/plots_template.html]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / ".dvc" / "plots_template.html"
# In load order: vega-lite needs vega, vega-embed needs both.
LIBRARIES = ("vega", "vega-lite", "vega-embed")
# dvc_render fills these by plain text replacement; {scripts} (where DVC would put its CDN
# <script> tags) is deliberately absent.
PLOTS, REFRESH, SCRIPTS = "{plot_divs}", "{refresh_tag}", "{scripts}"
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
{libraries}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def fail(message: str) -> None:
    print(f"dvc_plots_template: {message}", file=sys.stderr)
    sys.exit(1)


def library_script(assets_dir: Path, name: str, version: str | None) -> str:
    code_path, licence_path = assets_dir / name / f"{name}.js", assets_dir / name / "LICENSE"
    if not code_path.is_file() or not licence_path.is_file():
        fail(f"{code_path} or its LICENSE is missing: reinstall snakemake (its report assets)")
    code, licence = code_path.read_text(encoding="utf-8"), licence_path.read_text(encoding="utf-8")
    # The code sits inside <script>: these would end it early or be filled in by dvc_render.
    for marker in (PLOTS, REFRESH, SCRIPTS):
        if marker in code:
            fail(f"{code_path} contains {marker}, which DVC would replace")
    if re.search(r"</script|<!--", code, re.IGNORECASE) or "*/" in licence:
        fail(f"{code_path} cannot be inlined in a <script> element as it is")
    header = (f"/*! {name} {version or ''}, from snakemake/assets/data/{name}/ (Snakemake's report "
              f"assets), where the libraries it bundles have their licences.\n{licence}*/")
    return f"    <script>\n{header}\n{code}\n    </script>"


def render(assets_dir: Path, versions: dict[str, str | None]) -> str:
    scripts = "\n".join(library_script(assets_dir, name, versions.get(name))
                        for name in LIBRARIES)
    return PAGE.format(libraries=scripts, refresh_tag=REFRESH, plot_divs=PLOTS)


def snakemake_assets() -> tuple[Path, dict[str, str | None]]:
    try:
        from snakemake.assets import Assets
    except ImportError:
        fail("snakemake is not installed (the `workflow` extra): it ships the vega builds")
    versions = {name: Assets.get_version(f"{name}/{name}.js") for name in LIBRARIES}
    return Path(str(Assets.base_path())), versions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="template to write (default: .dvc/plots_template.html)")
    args = parser.parse_args(argv)
    page = render(*snakemake_assets())
    temp = args.out.with_name(f".{args.out.name}.{os.getpid()}")
    temp.write_text(page, encoding="utf-8")
    temp.replace(args.out)
    print(f"wrote {args.out} ({len(page) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
