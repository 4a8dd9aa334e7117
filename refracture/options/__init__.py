"""What the user types: each command's options and help, one module per command group.

These modules are what ``refracture CMD --help`` imports (``refracture.lazy_group``), so they
import only typer and the standard library: no MLflow, BentoML, SHAP, Spark, pandas. Each
function declares a command's options (typer annotations) and, in its docstring, its help;
its body makes the checks that need nothing heavy. The work is in ``refracture.commands``,
in the function of the same name with the same parameters (``refracture.cli.COMMANDS``
pairs them).
"""
