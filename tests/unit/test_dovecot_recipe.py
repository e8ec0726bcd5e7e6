"""The patched Dovecot's recipe (salt/chatmail/dovecot/recipe, dovecot/build.py):
version discipline, cache lookup and publishing, without building anything."""

import hashlib

import pytest

from dovecot import build

# The patches of each RECIPE (the N of +chatmail<N>).  A relay installs a
# build only when its version differs from the installed one, so a changed
# patch needs a new RECIPE: bump it in build-debs.sh and record the hashes.
PATCHES_2 = {
    "01-no-idle-notify-delay.patch": "beda5a3f38ab3da306b7b81d17aa03ea"
    "1669a40ffc34f1800593670bfb5c2524",
    "02-no-lost-notify-at-hibernation.patch": "f507299dc9c9a610fb93d44a84afeca1"
    "b5fc8e548b93351b3ff11edec0e9d0d5",
}
RECORDED = {
    2: PATCHES_2,
    # the same patches; the archive has dovecot-sieve as well (Pigeonhole, for
    # the dedupe script: dedupe_period, docs/dovecot.md)
    3: PATCHES_2,
}


def test_changed_patches_bump_the_recipe():
    got = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((build.RECIPE / "patches").glob("*.patch"))
    }
    recipe = build.recipe_number()
    assert RECORDED.get(recipe) == got, (
        f"the patches differ from those recorded for RECIPE={recipe}: bump RECIPE in"
        " build-debs.sh and record the new hashes in this test"
    )


def test_recipe_id_depends_on_options_not_on_comments(monkeypatch, tmp_path):
    assert build.recipe_id(lto=False) != build.recipe_id(lto=True)
    recipe = tmp_path / "recipe"
    (recipe / "patches").mkdir(parents=True)
    for p in (build.RECIPE / "patches").glob("*.patch"):
        (recipe / "patches" / p.name).write_bytes(p.read_bytes())
    script = (build.RECIPE / "build-debs.sh").read_text()
    (recipe / "build-debs.sh").write_text(script + "\n# a comment\n")
    before = build.recipe_id()
    monkeypatch.setattr(build, "RECIPE", recipe)
    assert build.recipe_id() == before
    (recipe / "build-debs.sh").write_text(script.replace("RECIPE=", "RECIPE=9", 1))
    assert build.recipe_id() != before


def fake_build(cache, name, version, archive=b"tar"):
    d = cache / name
    d.mkdir(parents=True)
    (d / build.ARCHIVE).write_bytes(archive)
    sha = hashlib.sha256(archive).hexdigest()
    source = version.rsplit("+chatmail", 1)[0]
    (d / "build-info").write_text(f"version: {version}\nsource: {source}\narchive_sha256: {sha}\n")
    return d


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "CACHE_DIR", tmp_path / "dovecot-debs")
    return tmp_path / "dovecot-debs"


def test_newest_cached_build_of_the_current_recipe(cache):
    rid = build.recipe_id()
    fake_build(cache, f"a-{rid}", "1:2.3.19.1+dfsg1-2.1+deb12u6+chatmail2")
    newest = fake_build(cache, f"b-{rid}", "1:2.3.19.1+dfsg1-2.1+deb12u10+chatmail2")
    fake_build(cache, "c-otherrecipe", "1:2.3.19.1+dfsg1-2.1+deb12u11+chatmail1")
    assert build.newest_cached() == newest
    assert set(build.cached_builds()) == {
        "1:2.3.19.1+dfsg1-2.1+deb12u6",
        "1:2.3.19.1+dfsg1-2.1+deb12u10",
    }
    assert build.newest_cached(lto=True) is None


def test_same_version_of_another_recipe_is_refused(cache):
    fake_build(cache, "old-otherrecipe", "1:2.3.19.1+dfsg1-2.1+deb12u6+chatmail2")
    with pytest.raises(SystemExit, match="bumping RECIPE"):
        build._refuse_same_version("1:2.3.19.1+dfsg1-2.1+deb12u6+chatmail2", build.recipe_id())
    build._refuse_same_version("1:2.3.19.1+dfsg1-2.1+deb12u6+chatmail3", build.recipe_id())


def test_publish_is_idempotent(cache, tmp_path):
    d = fake_build(cache, f"x-{build.recipe_id()}", "1:2.3+chatmail2", archive=b"archive")
    dest = tmp_path / "fileroot" / "chatmail-dovecot"
    sha = build.publish(d, dest)
    assert (dest / build.ARCHIVE).read_bytes() == b"archive"
    assert (dest / f"{build.ARCHIVE}.sha256").read_text() == f"{sha}  {build.ARCHIVE}\n"
    assert (dest / "VERSION").read_text() == "1:2.3+chatmail2\n"
    mtime = (dest / build.ARCHIVE).stat().st_mtime_ns
    assert build.publish(d, dest) == sha
    assert (dest / build.ARCHIVE).stat().st_mtime_ns == mtime


def test_an_lto_build_may_share_the_version(cache):
    d = fake_build(cache, "lto-otherrecipe", "1:2.3.19.1+dfsg1-2.1+deb12u6+chatmail2")
    with open(d / "build-info", "a") as info:
        info.write("lto: 1\n")
    build._refuse_same_version("1:2.3.19.1+dfsg1-2.1+deb12u6+chatmail2", build.recipe_id())


def test_a_cached_build_is_taken_while_another_build_holds_the_lock(cache):
    """Another tree's build of a different recipe holds the build lock for
    minutes: a session whose recipe is cached must not wait for it."""
    import fcntl

    d = fake_build(cache, f"y-{build.recipe_id()}", "1:2.3.19.1+dfsg1-2.1+deb12u6+chatmail2")
    with open(cache / ".lock", "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        assert build.build(check_newer=False, allow_older=True) == (d, False)
