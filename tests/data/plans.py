"""A plausible planned heat (inputs of an infer or optimize request): a few grades
charged, the process plan, the power-on time. One place for the tests and benches."""

PLANNED_HEAT: dict[str, float] = {
    "charge_E3_t": 40.0,
    "charge_E8_t": 30.0,
    "charge_HBI_t": 20.0,
    "hot_heel_t": 15.0,
    "lime_t": 7.0,
    "carbon_kg": 1800.0,
    "oxygen_nm3": 3800.0,
    "gas_nm3": 800.0,
    "power_on_min": 40.0,
    "power_off_min": 14.0,
    "tap_temp_aim_c": 1630.0,
}
