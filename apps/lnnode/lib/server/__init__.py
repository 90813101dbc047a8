"""What guards the app's HTTP surface: errors that become 4xx answers, the upload guard, parameter checks."""
