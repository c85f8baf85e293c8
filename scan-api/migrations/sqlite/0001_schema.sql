-- Scans, the versions (tags, digests) each covered, and their vulnerability findings.
CREATE TABLE scans (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    image         TEXT    NOT NULL,
    artifact_name TEXT    NOT NULL,
    image_id      TEXT,
    os_family     TEXT,
    os_name       TEXT,
    report_id     TEXT,
    created_at    TEXT,
    stored_at     TEXT    NOT NULL,
    scanned_at_us BIGINT  NOT NULL,
    versions_json TEXT    NOT NULL,
    critical      BIGINT  NOT NULL,
    high          BIGINT  NOT NULL,
    medium        BIGINT  NOT NULL,
    low           BIGINT  NOT NULL,
    unknown       BIGINT  NOT NULL
);
CREATE INDEX scans_by_image ON scans (image, scanned_at_us, id);
CREATE INDEX scans_by_time ON scans (scanned_at_us, id);

CREATE TABLE scan_versions (
    scan_id BIGINT NOT NULL,
    image   TEXT   NOT NULL,
    version TEXT   NOT NULL,
    kind    TEXT   NOT NULL
);
CREATE INDEX scan_versions_by_scan ON scan_versions (scan_id);
CREATE INDEX scan_versions_by_image ON scan_versions (image);

CREATE TABLE findings (
    scan_id           BIGINT NOT NULL,
    ord               BIGINT NOT NULL,
    target            TEXT   NOT NULL,
    vulnerability_id  TEXT   NOT NULL,
    pkg_name          TEXT   NOT NULL,
    pkg_id            TEXT,
    pkg_path          TEXT,
    installed_version TEXT   NOT NULL,
    fixed_version     TEXT,
    severity          TEXT   NOT NULL,
    status            TEXT,
    title             TEXT,
    primary_url       TEXT
);
CREATE INDEX findings_by_scan ON findings (scan_id, ord);
