"""Names of the heat-outcome model's inputs and outputs.

One list, shared by the simulator, heat assembly, training and the ONNX contract, so a
column can never mean different things in different places. Units are in the names.
"""

GRADES = ("E3", "E1", "E2", "E8", "E6", "E40", "E46", "EHRB", "E5H", "DRI", "HBI", "PIG")
FEATURES = (
    *(f"charge_{g}_t" for g in GRADES),
    "hot_heel_t",
    "lime_t",
    "carbon_kg",
    "oxygen_nm3",
    "gas_nm3",
    "power_on_min",
    "power_off_min",
    "tap_temp_aim_c",
)
TARGETS = (
    "energy_kwh_t",
    "tapped_t",
    "tap_temp_c",
    "cu_pct",
    "sn_pct",
    "ni_pct",
    "cr_pct",
    "mo_pct",
)

# Reference centre and scale of each column, in engineering units, from the typical
# values of ../shared/domain/EAF.md for 80-150 t furnaces. The model normalises with
# these fixed constants (carried inside the ONNX graph) rather than with statistics of
# one plant's data, so every site trains in the same coordinates from the first round.
FEATURE_REFERENCE: dict[str, tuple[float, float]] = {
    **{f"charge_{g}_t": (8.0, 15.0) for g in GRADES},
    "hot_heel_t": (15.0, 5.0),
    "lime_t": (7.0, 3.0),
    "carbon_kg": (1800.0, 800.0),
    "oxygen_nm3": (3800.0, 1500.0),
    "gas_nm3": (800.0, 400.0),
    "power_on_min": (38.0, 8.0),
    "power_off_min": (14.0, 6.0),
    "tap_temp_aim_c": (1630.0, 25.0),
}
TARGET_REFERENCE: dict[str, tuple[float, float]] = {
    "energy_kwh_t": (410.0, 50.0),
    "tapped_t": (100.0, 30.0),
    "tap_temp_c": (1640.0, 20.0),
    "cu_pct": (0.15, 0.1),
    "sn_pct": (0.015, 0.01),
    "ni_pct": (0.06, 0.04),
    "cr_pct": (0.05, 0.03),
    "mo_pct": (0.012, 0.008),
}
