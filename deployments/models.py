# Environments, services, deployments and their events arrive with the deployments issue.
