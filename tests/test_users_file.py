"""A users file for a team (issue 18): accounts with salted scrypt hashes written by
``python -m api.accounts add``, read by ``app.py --users FILE``; the login page, HTTP Basic
and the administrator (the file's first user) work as with ``--auth``, and no password is
ever stored."""

import base64
import http.client
import os
import subprocess
import sys
import urllib.parse

import pytest

from api.accounts import Accounts, read_users, verify_password
from conftest import ROOT


def add(path, name, password):
    return subprocess.run([sys.executable, "-m", "api.accounts", "add", name, str(path), "--password-stdin"],
                          input=password + "\n", capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_the_file_holds_salted_hashes_only(tmp_path):
    users = tmp_path / "users.txt"
    for name, password in (("组长", "lead-密码"), ("小王", "wang-pass"), ("小王", "new-pass")):
        assert add(users, name, password).returncode == 0
    text = users.read_text(encoding="utf-8")
    assert "lead-密码" not in text and "wang-pass" not in text and "new-pass" not in text
    assert oct(os.stat(users).st_mode & 0o777) == "0o600"
    pairs = read_users(users)
    assert [n for n, _ in pairs] == ["组长", "小王"]  # re-adding replaced 小王's line
    assert pairs[0][1] != Accounts.of(pairs).pairs[1][1]  # each its own salt
    accounts = Accounts.of(pairs)
    assert accounts.check("小王", "new-pass") == "小王" and accounts.check("小王", "wang-pass") is None
    assert accounts.check("组长", "lead-密码") == "组长" and accounts.check("nobody", "lead-密码") is None
    assert accounts.admins == {"组长"} and not verify_password("x", "scrypt$broken")
    bad = add(users, "有:冒号", "x")
    assert bad.returncode == 2 and "冒号" in bad.stderr
    (tmp_path / "bad.txt").write_text("小李:plain-password\n", encoding="utf-8")
    with pytest.raises(ValueError):
        read_users(tmp_path / "bad.txt")


def test_a_server_with_a_users_file(demo_models, demo_cache, tmp_path):
    from conftest import LaunchedApp

    users = tmp_path / "users.txt"
    assert add(users, "组长", "lead-pass").returncode == 0 and add(users, "小王", "wang-pass").returncode == 0
    app = LaunchedApp(["--demo", "--api", "--users", str(users)], demo_cache, tmp_path / "outputs")

    def get(path, user, password):
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=60)
        conn.request("GET", path, headers={"Authorization": f"Basic {token}"})
        status = conn.getresponse().status
        conn.close()
        return status

    def login(user, password):
        conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=60)
        conn.request("POST", "/login", urllib.parse.urlencode({"username": user, "password": password}),
                     {"Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        response.read()
        conn.close()
        return response.status

    try:
        assert get("/sdapi/v1/samplers", "小王", "wang-pass") == 200
        assert get("/sdapi/v1/samplers", "小王", "wrong") == 401
        assert get("/danqing/v1/usage", "组长", "lead-pass") == 200  # the file's first user administers
        assert get("/danqing/v1/usage", "小王", "wang-pass") == 403
        assert login("小王", "wang-pass") == 200 and login("小王", "wrong") != 200
    finally:
        app.stop()
    bad = tmp_path / "bad.txt"
    bad.write_text("not a users line\n", encoding="utf-8")
    run = subprocess.run([sys.executable, str(ROOT / "app.py"), "--demo", "--no-browser", "--users", str(bad)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "DANQING_CACHE": str(demo_cache)})
    assert run.returncode != 0 and "用户文件" in run.stderr
