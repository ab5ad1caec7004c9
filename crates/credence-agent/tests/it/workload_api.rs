// workload_api tests
