"""The admin plane: the monitoring API's route table, served on a strict h11 listener
and, through the `MonitoringPort` seam, on the data port."""
