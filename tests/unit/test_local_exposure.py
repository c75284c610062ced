"""What a local `prism up` leaves readable or reachable: Ray's token file (no servers here)."""
import os
import stat

from cluster.services import secure_ray_token


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_rays_token_file_is_created_owner_only_and_an_existing_one_is_narrowed(tmp_path):
    home = tmp_path / "home"
    path = secure_ray_token({}, home)
    assert path == home / ".ray" / "auth_token"
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    # One Ray made itself, with the umask (0644, as Ray 2.60 writes it): narrowed, its token kept.
    path.chmod(0o644)
    path.parent.chmod(0o755)
    assert secure_ray_token({}, home) == path and path.read_text() == token
    assert mode(path) == 0o600 and mode(path.parent) == 0o700


def test_rays_token_elsewhere_or_in_the_environment(tmp_path):
    own = tmp_path / "tokens" / "ray"
    own.parent.mkdir(mode=0o755)
    own.write_text("x" * 64)
    own.chmod(0o644)
    assert secure_ray_token({"RAY_AUTH_TOKEN_PATH": str(own)}, tmp_path / "home") == own
    assert mode(own) == 0o600 and own.read_text() == "x" * 64
    assert mode(own.parent) == 0o755  # not Ray's directory: left as it is
    assert not (tmp_path / "home").exists()
    assert secure_ray_token({"RAY_AUTH_TOKEN": "t" * 64}, tmp_path / "home") is None  # nothing on disk to protect
    assert not (tmp_path / "home").exists()
