from capstan_core.service import main as _main

from .service import DEFINITION


def main() -> None:
    _main(DEFINITION)


if __name__ == "__main__":
    main()
