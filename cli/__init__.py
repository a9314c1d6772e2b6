"""The composition root: the user-facing `scaling` command and the demo, which join training
(scaling), sweeps (launch) and fits (analysis); none of those packages imports this one."""
