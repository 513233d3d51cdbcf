"""A default run's output is fedsim's own: Ray's notices of the actors' planned exit are dropped."""

import ray._private.worker as ray_worker

from fedsim.run.engine import ACTOR_EXIT_NOTICE, without_actor_exit_notices

NOTICE = (
    "Task ClientAppActor.terminate failed. There are infinite retries remaining, so the task "
    "will be retried. Error: The actor died unexpectedly before finishing this task."
)


def listener_prints(lines: list[str]) -> None:
    """What Ray's driver error listener does with a published error (worker.py)."""
    ray_worker.print_to_stdstream({"lines": lines, "pid": "raylet", "is_err": False},
                                  ignore_prefix=False)


def test_only_the_actor_exit_notice_is_dropped(capsys):
    assert ACTOR_EXIT_NOTICE in NOTICE
    with without_actor_exit_notices():
        listener_prints([NOTICE])
        listener_prints(["Task ClientAppActor.run failed: out of memory"])
    out = capsys.readouterr().out
    assert "terminate failed" not in out
    assert "ClientAppActor.run failed: out of memory" in out


def test_ray_prints_as_before_outside_the_simulation(capsys):
    original = ray_worker.print_to_stdstream
    with without_actor_exit_notices():
        pass
    assert ray_worker.print_to_stdstream is original
    listener_prints([NOTICE])
    assert "terminate failed" in capsys.readouterr().out
