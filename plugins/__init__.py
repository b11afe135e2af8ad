"""Built-in distillops plugins, registered through entry points in pyproject.toml like any third party's."""
