"""Tests against a real Orthanc PACS over DICOMweb (run in a network namespace with only loopback)."""
