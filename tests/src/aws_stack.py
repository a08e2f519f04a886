"""Creates deploy/aws/muster.yaml as stack NAME in moto (argv: TEMPLATE NAME) in a fresh VPC with
two subnets, after the cookie parameter it reads; prints the stack's status and outputs as JSON."""
import json
import sys
import time

import boto3

template, name = sys.argv[1], sys.argv[2]
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
    ],
)
for _ in range(300):
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    if not stack["StackStatus"].endswith("IN_PROGRESS"):
        break
    time.sleep(0.1)
print(json.dumps({
    "status": stack["StackStatus"],
    "reason": stack.get("StackStatusReason"),
    "outputs": {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])},
}))
