"""What runs in the supervisor: metadata, spill/segments/retention/recovery, the group coordinator and its assignors, metrics. Never on the data path; never imports shmlog.client."""
