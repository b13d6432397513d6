"""`aki-alert serve`. Placeholder."""


def register(sub) -> None:
    pass
