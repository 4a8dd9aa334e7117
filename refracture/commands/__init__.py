"""What each command does, one module per command group: plain functions with keyword-only
parameters, called by ``refracture.lazy_group`` with the values of the options declared in
``refracture.options`` (the function of the same name). Imported only when a command runs."""
