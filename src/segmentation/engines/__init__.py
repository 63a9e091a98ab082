"""Optional engines beside the local (pandas) one."""
