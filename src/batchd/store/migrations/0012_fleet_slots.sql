-- A concurrency cap for a fleet (fleet_max_concurrency, backends/fleet.py): each process's
-- share of a backend's cap, one row per (backend, holder): the slots it holds (never fewer
-- than its calls in flight), the slots it would use, and until when its lease runs (a
-- wall-clock time, renewed while it holds any). A lapsed lease's slots are free again.
CREATE TABLE fleet_slots (
    backend TEXT NOT NULL,
    holder TEXT NOT NULL,
    slots INTEGER NOT NULL,
    wanted INTEGER NOT NULL,
    lease_until REAL NOT NULL
);
CREATE UNIQUE INDEX fleet_slots_key ON fleet_slots (backend, holder);
