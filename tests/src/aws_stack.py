"""Creates deploy/aws/muster.yaml as stack NAME in moto (argv: TEMPLATE NAME [KEY=VALUE...], the
pairs being further stack parameters) in a fresh VPC with
two subnets, after the cookie parameter it reads; prints as JSON the stack's status and outputs,
the node role's policy documents as created, the load balancer listener's default actions and
rules, and the load balancer security group's ingress rules."""
import ast
import json
import sys
import time

import boto3

template, name = sys.argv[1], sys.argv[2]
extra = [dict(zip(("ParameterKey", "ParameterValue"), kv.split("=", 1))) for kv in sys.argv[3:]]
ec2 = boto3.client("ec2")
cfn = boto3.client("cloudformation")
ssm = boto3.client("ssm")
vpc = ec2.create_vpc(CidrBlock="10.90.0.0/16")["Vpc"]["VpcId"]
subnets = [
    ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.90.{i}.0/24", AvailabilityZone=az)["Subnet"]["SubnetId"]
    for i, az in enumerate(["us-east-1a", "us-east-1b"])
]
image = ec2.describe_images()["Images"][0]["ImageId"]
ssm.put_parameter(Name="/muster/cookie", Type="SecureString", Value="k" * 32)
cfn.create_stack(
    StackName=name,
    TemplateBody=open(template).read(),
    Capabilities=["CAPABILITY_IAM"],
    Parameters=[
        {"ParameterKey": "VpcId", "ParameterValue": vpc},
        {"ParameterKey": "SubnetIds", "ParameterValue": ",".join(subnets)},
        {"ParameterKey": "ImageId", "ParameterValue": image},
    ]
    + extra,
)
for _ in range(300):
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    if not stack["StackStatus"].endswith("IN_PROGRESS"):
        break
    time.sleep(0.1)
resources = {
    r["LogicalResourceId"]: r.get("PhysicalResourceId")
    for r in cfn.describe_stack_resources(StackName=name)["StackResources"]
    if "LogicalResourceId" in r  # moto lists a resource whose Condition is false without one
}
iam = boto3.client("iam")
elbv2 = boto3.client("elbv2")
role = resources["NodeRole"]
policies = [
    iam.get_role_policy(RoleName=role, PolicyName=p)["PolicyDocument"]
    for p in iam.list_role_policies(RoleName=role)["PolicyNames"]
]
listener = elbv2.describe_listeners(ListenerArns=[resources["Listener"]])["Listeners"][0]
rules = elbv2.describe_rules(ListenerArn=listener["ListenerArn"])["Rules"]
lb_group = ec2.describe_security_groups(GroupIds=[resources["LoadBalancerSecurityGroup"]])["SecurityGroups"][0]
print(json.dumps({
    "status": stack["StackStatus"],
    "reason": stack.get("StackStatusReason"),
    "outputs": {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])},
    # moto returns a policy created by CloudFormation as the repr of a Python dict.
    "policies": [ast.literal_eval(p) if isinstance(p, str) else p for p in policies],
    "listener": {
        "default_actions": listener["DefaultActions"],
        "rules": [r for r in rules if not r.get("IsDefault")],
        "target_group": resources["TargetGroup"],
    },
    "load_balancer_ingress": lb_group["IpPermissions"],
}, default=str))
