"""`refracture clients`: add prints the key once (stdout) and stores its hash; list shows
ids, never keys; rotate and revoke; bad input is a clear error and writes nothing."""

from __future__ import annotations

from typer.testing import CliRunner

from refracture.cli import app
from serving.auth.clients import ClientRegistry, read_registry


def test_add_list_rotate_revoke(tmp_path):
    path = tmp_path / "clients.json"
    runner = CliRunner()
    result = runner.invoke(app, ["clients", "add", "ris", "--scopes", "predict,explain", "--days", "30", "--rate", "5",
                                 "--file", str(path)])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("rr_") and key not in path.read_text()
    (client,) = read_registry(path)
    assert client.scopes == {"predict", "explain"} and client.rate_limit_per_s == 5 and client.expires is not None
    listed = runner.invoke(app, ["clients", "list", "--file", str(path)], env={"COLUMNS": "200"})
    assert "ris" in listed.stdout and key not in listed.stdout and client.keys[0].id in listed.stdout
    rotated = runner.invoke(app, ["clients", "rotate", "ris", "--file", str(path)])
    new_key = rotated.stdout.strip().splitlines()[-1]
    assert new_key != key and ClientRegistry(path).check_key(key).reason is None
    assert runner.invoke(app, ["clients", "revoke", "ris", "--key", client.keys[0].id, "--file", str(path)]).exit_code == 0
    registry = ClientRegistry(path)
    assert registry.check_key(key).reason == "revoked" and registry.check_key(new_key).reason is None
    assert runner.invoke(app, ["clients", "revoke", "ris", "--file", str(path)]).exit_code == 0
    assert ClientRegistry(path).check_key(new_key).reason == "revoked"


def test_bad_input_writes_nothing(tmp_path):
    path = tmp_path / "clients.json"
    runner = CliRunner()
    bad_scope = runner.invoke(app, ["clients", "add", "ris", "--scopes", "admin", "--file", str(path)])
    assert bad_scope.exit_code != 0 and "allowed: predict" in bad_scope.output and not path.exists()
    bad_name = runner.invoke(app, ["clients", "add", "Other Name", "--scopes", "predict", "--file", str(path)])
    assert bad_name.exit_code == 1 and "not a valid client name" in bad_name.output and not path.exists()
    no_file = runner.invoke(app, ["clients", "list"], env={"REFRACTURE_CLIENTS_FILE": ""})
    assert no_file.exit_code != 0 and "REFRACTURE_CLIENTS_FILE" in no_file.output
