import click

@click.group()
def main() -> None:
    """calosim"""
