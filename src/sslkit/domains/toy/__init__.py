"""The built-in test method: VICReg on synthetic vectors. It exercises the loop, resume,
DDP, export and evaluation without any domain library."""
