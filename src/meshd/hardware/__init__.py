"""Host resources: process trees and memory (psutil), GPU memory (NVML)."""
