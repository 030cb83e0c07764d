from pathlib import Path

from usam.presets import departures_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_departures_table_is_the_one_usam_reports():
    text = README.read_text()
    start = text.index("<!-- departures table")
    start = text.index("\n", start) + 1
    end = text.index("<!-- end of departures table -->")
    assert text[start:end].strip() == departures_markdown()
