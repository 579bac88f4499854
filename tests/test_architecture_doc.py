"""docs/architecture.md names every module's job: each file of store/, programs/, metrics/, finetune/ and
finetune/review/ is named in its package's paragraph, so a new file cannot land without its line."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("store", "programs", "metrics", "finetune", "finetune/review")


def _paragraphs() -> dict[str, str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    found = {}
    for package in PACKAGES:
        m = re.search(rf"^\*\*{re.escape(package)}/\*\* — (.*?)(?=^\*\*|^## )", text, re.S | re.M)
        assert m, f"docs/architecture.md has no paragraph for {package}/"
        found[package] = m.group(1)
    return found


def test_every_module_has_its_line_in_the_architecture_doc():
    paragraphs = _paragraphs()
    missing = [f"{package}/{path.name}" for package in PACKAGES for path in sorted((ROOT / package).glob("*.py"))
               if f"`{path.name}`" not in paragraphs[package]]
    assert not missing, f"docs/architecture.md does not say what these do: {', '.join(missing)}"
