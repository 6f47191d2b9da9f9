import pytest

from kunlun_jax.outputs import refuse_to_replace, write_atomically


def test_existing_outputs_are_refused_unless_overwrite_and_written_whole(tmp_path):
    mine, new = tmp_path / "mine.json", tmp_path / "sub" / "new.json"
    mine.write_text("mine")
    refuse_to_replace([None, new], overwrite=False)  # nothing there: nothing to refuse
    with pytest.raises(FileExistsError, match=r"mine\.json already exists: pass --overwrite to"):
        refuse_to_replace([mine, new, None], overwrite=False)
    refuse_to_replace([mine], overwrite=True)
    write_atomically(new, "text")
    assert new.read_text() == "text"
    assert [p.name for p in new.parent.iterdir()] == ["new.json"]  # no temporary file left
