from pathlib import Path

from usam.presets import departures_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_departures_table_is_the_one_usam_reports():
    text = README.read_text()
    start = text.index("<!-- departures table")
    start = text.index("\n", start) + 1
    end = text.index("<!-- end of departures table -->")
    assert text[start:end].strip() == departures_markdown()


def test_the_readme_layout_names_every_module():
    text = README.read_text()
    layout = text[text.index("## Layout") :]
    package = README.parent / "src" / "usam"
    missing = []
    for path in sorted(package.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py") or path.parent.name == "cli":
            continue
        if f"`{path.name}`" not in layout:
            missing.append(str(path.relative_to(package)))
    for folder in sorted(entry for entry in package.iterdir() if (entry / "__init__.py").exists()):
        if f"`{folder.name}/`" not in layout:
            missing.append(f"{folder.name}/")
    assert missing == []
