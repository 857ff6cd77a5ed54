"""Files shipped with the studio: demo weights (zoo/) and icons (icons/).

pyproject.toml maps the package `studio.resources` onto this folder, so a wheel carries it as
studio/resources/; the code finds it with `studio.resource_dir()`."""
