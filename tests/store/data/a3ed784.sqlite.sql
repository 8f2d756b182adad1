-- The store's schema at git a3ed784 (the last release without migrations), as its
-- metadata.create_all made it on sqlite: generated from that commit's broker/state.py.

CREATE TABLE blocks (
	scope VARCHAR(400) NOT NULL,
	kind VARCHAR(16),
	backend VARCHAR(32),
	provider VARCHAR(32),
	region VARCHAR(64),
	zone VARCHAR(64),
	instance_type VARCHAR(255),
	bucket VARCHAR(128),
	provisioning VARCHAR(16),
	reason TEXT NOT NULL,
	until FLOAT NOT NULL,
	created_at FLOAT NOT NULL,
	PRIMARY KEY (scope)
);

CREATE TABLE clusters (
	id VARCHAR(64) NOT NULL,
	created_at FLOAT NOT NULL,
	updated_at FLOAT NOT NULL,
	status VARCHAR(16) NOT NULL,
	reason VARCHAR(32),
	detail TEXT,
	cycle INTEGER NOT NULL,
	request JSON NOT NULL,
	experiment JSON,
	backend VARCHAR(32),
	shape_id VARCHAR(255),
	provider VARCHAR(32),
	region VARCHAR(64),
	zone VARCHAR(64),
	nodes_count INTEGER,
	procs_per_node INTEGER,
	gpus_billed INTEGER,
	price_per_hour FLOAT,
	nodes JSON,
	owner VARCHAR(255),
	lease_until FLOAT,
	ending VARCHAR(16),
	version INTEGER NOT NULL,
	org VARCHAR(128),
	mode VARCHAR(16),
	idempotency_key VARCHAR(255),
	PRIMARY KEY (id)
);

CREATE INDEX clusters_org_created ON clusters (org, created_at);

CREATE UNIQUE INDEX clusters_org_idempotency ON clusters (org, idempotency_key);

CREATE INDEX ix_clusters_created_at ON clusters (created_at);

CREATE INDEX ix_clusters_status ON clusters (status);

CREATE TABLE credits (
	org VARCHAR(64) NOT NULL,
	usd FLOAT NOT NULL,
	granted_at FLOAT NOT NULL,
	PRIMARY KEY (org)
);

CREATE TABLE leases (
	name VARCHAR(128) NOT NULL,
	owner VARCHAR(255) NOT NULL,
	until FLOAT NOT NULL,
	PRIMARY KEY (name)
);

CREATE TABLE quota_readings (
	provider VARCHAR(32) NOT NULL,
	region VARCHAR(64) NOT NULL,
	bucket VARCHAR(128) NOT NULL,
	name VARCHAR(255),
	unit VARCHAR(8),
	market VARCHAR(16),
	quota_limit FLOAT,
	usage FLOAT,
	note TEXT,
	read_at FLOAT NOT NULL,
	PRIMARY KEY (provider, region, bucket)
);

CREATE TABLE tokens (
	id VARCHAR(32) NOT NULL,
	org VARCHAR(128) NOT NULL,
	name VARCHAR(255) NOT NULL,
	role VARCHAR(16) NOT NULL,
	digest VARCHAR(64) NOT NULL,
	created_at FLOAT NOT NULL,
	revoked_at FLOAT,
	cluster_id VARCHAR(64),
	PRIMARY KEY (id),
	UNIQUE (digest)
);

CREATE INDEX ix_tokens_org ON tokens (org);

CREATE TABLE agents (
	cluster_id VARCHAR(64) NOT NULL,
	cycle INTEGER NOT NULL,
	rank INTEGER NOT NULL,
	address VARCHAR(64) NOT NULL,
	instance_id VARCHAR(255),
	registered_at FLOAT NOT NULL,
	started_at FLOAT,
	pid INTEGER,
	heartbeat_at FLOAT,
	exited_at FLOAT,
	exit_code INTEGER,
	exit_signal INTEGER,
	exit_reason VARCHAR(32),
	exit_tail JSON,
	log_next_seq INTEGER NOT NULL,
	log_dropped INTEGER NOT NULL,
	PRIMARY KEY (cluster_id, cycle, rank),
	FOREIGN KEY(cluster_id) REFERENCES clusters (id)
);

CREATE TABLE artifact_syncs (
	cluster_id VARCHAR(64) NOT NULL,
	cycle INTEGER NOT NULL,
	rank INTEGER NOT NULL,
	kind VARCHAR(16) NOT NULL,
	files INTEGER NOT NULL,
	bytes INTEGER NOT NULL,
	failed INTEGER NOT NULL,
	errors JSON,
	final_at FLOAT,
	updated_at FLOAT NOT NULL,
	PRIMARY KEY (cluster_id, cycle, rank, kind),
	FOREIGN KEY(cluster_id) REFERENCES clusters (id)
);

CREATE TABLE attempts (
	id INTEGER NOT NULL,
	cluster_id VARCHAR(64) NOT NULL,
	cycle INTEGER NOT NULL,
	attempt_no INTEGER NOT NULL,
	shape_id VARCHAR(255) NOT NULL,
	provider VARCHAR(32) NOT NULL,
	backend VARCHAR(32) NOT NULL,
	region VARCHAR(64) NOT NULL,
	zone VARCHAR(64) NOT NULL,
	nodes INTEGER NOT NULL,
	token VARCHAR(64) NOT NULL,
	started_at FLOAT NOT NULL,
	ended_at FLOAT,
	outcome VARCHAR(16) NOT NULL,
	error_code VARCHAR(64),
	reach VARCHAR(16),
	reason VARCHAR(32),
	message TEXT,
	retries INTEGER NOT NULL,
	nodes_created INTEGER NOT NULL,
	nodes_cleaned INTEGER NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(cluster_id) REFERENCES clusters (id)
);

CREATE INDEX ix_attempts_cluster_id ON attempts (cluster_id);

CREATE TABLE log_lines (
	id INTEGER NOT NULL,
	cluster_id VARCHAR(64) NOT NULL,
	cycle INTEGER NOT NULL,
	rank INTEGER NOT NULL,
	seq INTEGER NOT NULL,
	line TEXT NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(cluster_id) REFERENCES clusters (id)
);

CREATE INDEX log_lines_cluster_rank ON log_lines (cluster_id, rank, id);

CREATE TABLE transitions (
	id INTEGER NOT NULL,
	cluster_id VARCHAR(64) NOT NULL,
	cycle INTEGER NOT NULL,
	status VARCHAR(16) NOT NULL,
	at FLOAT NOT NULL,
	reason VARCHAR(32),
	detail TEXT,
	price_per_hour FLOAT,
	gpus_billed INTEGER,
	PRIMARY KEY (id),
	FOREIGN KEY(cluster_id) REFERENCES clusters (id)
);

CREATE INDEX ix_transitions_cluster_id ON transitions (cluster_id);
