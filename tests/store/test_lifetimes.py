"""Objects shared across processes live as long as some process holds a ref to them."""

import gc
import time

import numpy as np

import repartir
from repartir.runtime import driver
from rtsupport import settled_used_bytes, wait_until


@repartir.remote
class Keeper:
    def keep(self, box):
        self.box = box
        return True

    def total(self):
        return float(repartir.get(self.box[0]).sum())


@repartir.remote
def make_in_worker(value):
    return [repartir.put(np.full(200_000, value))]


def _churn():
    """Allocate and free blocks of the same size, so a freed block would be reused."""
    for _ in range(3):
        refs = [repartir.put(np.zeros(200_000)) for _ in range(3)]
        del refs
        gc.collect()
        time.sleep(0.05)


def test_actor_keeps_borrowed_ref_after_driver_drops_it(rt):
    k = Keeper.remote()
    ref = rt.put(np.ones(200_000))
    assert rt.get(k.keep.remote([ref]), timeout=30)
    del ref
    gc.collect()
    _churn()
    assert rt.get(k.total.remote(), timeout=30) == 200_000.0
    rt.kill(k)


def test_ref_put_by_a_task_survives_the_task(rt):
    box = rt.get(make_in_worker.remote(7.0), timeout=30)
    _churn()
    assert float(rt.get(box[0]).sum()) == 7.0 * 200_000


def test_export_pins_are_released_with_the_result(rt):
    warm = rt.get(make_in_worker.remote(0.0), timeout=30)  # the function's code is exported
    del warm
    before = settled_used_bytes()  # once the frees of the warm-up and earlier tests landed
    box = rt.get(make_in_worker.remote(3.0), timeout=30)
    assert float(rt.get(box[0]).sum()) == 3.0 * 200_000
    assert driver.store_statistics().used_bytes >= before + 200_000 * 8  # the object counts
    del box
    assert wait_until(lambda: (gc.collect(), driver.store_statistics().used_bytes)[1] == before,
                      10), (driver.store_statistics().used_bytes, before)
