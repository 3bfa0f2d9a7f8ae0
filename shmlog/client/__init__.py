"""What runs in a user's process: connect(), Cluster, Producer, Consumer and the group member. Talks to the supervisor only through shmlog.protocol; never imports shmlog.broker."""
