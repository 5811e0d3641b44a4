"""`python -m zoft` runs the CLI."""
from zoft.cli import app

app(prog_name="zoft")
