from hatchery.redaction import public_url


def test_repository_credentials_are_never_shown() -> None:
    assert (
        public_url("https://ci-bot:s3cret@git.example.com:8443/team/service.git")
        == "https://git.example.com:8443/team/service.git"
    )
    assert public_url("file:///srv/git/service") == "file:///srv/git/service"
    assert public_url("/srv/git/service") == "/srv/git/service"
