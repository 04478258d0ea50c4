"""BAT Studio web app; also the Hugging Face Space entry point (README front matter: app_file).

    python app.py        # the same as: python -m bat_app serve
"""

from bat_app.ui.serve import main

if __name__ == "__main__":
    raise SystemExit(main())
