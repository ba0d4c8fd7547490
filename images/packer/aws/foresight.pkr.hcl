# Foresight marketplace AMI: the AWS Deep Learning Base GPU AMI (NVIDIA driver installed) plus the NVIDIA
# container toolkit, the service image and foresight.service, hardened for the AWS Marketplace scan.
#
#   packer build -var service_image_archive=foresight.tar -var build_ssh_cidr=203.0.113.7/32 images/packer/aws
#
# Packer 1.6 has the amazon-ebs builder built in; Packer >= 1.7 first needs
# `packer plugins install github.com/hashicorp/amazon` (no required_plugins block, so 1.6 parses this).

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "instance_type" {
  type        = string
  default     = "g5.xlarge"
  description = "A GPU type, so the build can check that torch in the service image sees the GPU."
}

variable "source_ami_name" {
  type        = string
  default     = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
  description = "Name pattern of the Amazon-owned GPU AMI to start from; the newest match is used."
}

variable "build_ssh_cidr" {
  type        = string
  description = "The only CIDR the temporary build security group admits on port 22 (the build host's address)."
}

variable "service_image_archive" {
  type        = string
  description = "docker-archive tar of the service image (docker save / podman save)."
}

variable "service_image" {
  type        = string
  default     = "localhost/foresight:0.1.0"
  description = "The tag inside service_image_archive."
}

variable "image_version" {
  type    = string
  default = "0.1.0"
}

variable "nvidia_container_toolkit_version" {
  type        = string
  default     = "1.17.8-1"
  description = "Lowest NVIDIA container toolkit package version: the base's toolkit is kept at or above it, else this one is installed; empty keeps any."
}

variable "ubuntu_mirror" {
  type        = string
  default     = ""
  description = "An https:// Ubuntu mirror for the archive and security updates; empty keeps the base's hosts, switched to https (the build fails if they do not serve it)."
}

locals {
  build_time = regex_replace(timestamp(), "[- TZ:]", "")
}

source "amazon-ebs" "foresight" {
  region          = var.region
  instance_type   = var.instance_type
  ssh_username    = "ubuntu"
  ami_name        = "foresight-${var.image_version}-${local.build_time}"
  ami_description = "Foresight ${var.image_version}: GPU cache with a learned prefetcher"

  source_ami_filter {
    filters = {
      name                = var.source_ami_name
      architecture        = "x86_64"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = ["amazon"]
    most_recent = true
  }

  ena_support   = true
  sriov_support = true

  temporary_security_group_source_cidrs = [var.build_ssh_cidr]

  launch_block_device_mappings {
    device_name           = "/dev/sda1"
    volume_size           = 100
    volume_type           = "gp3"
    iops                  = 3000
    throughput            = 125
    delete_on_termination = true
  }

  tags = {
    Name    = "foresight-${var.image_version}"
    product = "foresight"
    version = var.image_version
  }
  run_tags = {
    Name    = "packer-foresight-${var.image_version}"
    product = "foresight"
  }
}

build {
  sources = ["source.amazon-ebs.foresight"]

  provisioner "file" {
    source      = var.service_image_archive
    destination = "/tmp/foresight-image.tar"
    generated   = true
  }

  provisioner "file" {
    source      = "${path.root}/../files/"
    destination = "/tmp/foresight-files"
  }

  provisioner "shell" {
    execute_command = "chmod +x {{ .Path }}; sudo -E env {{ .Vars }} {{ .Path }}"
    environment_vars = [
      "FORESIGHT_IMAGE=${var.service_image}",
      "NVIDIA_CTK_VERSION=${var.nvidia_container_toolkit_version}",
      "UBUNTU_MIRROR=${var.ubuntu_mirror}",
    ]
    scripts = [
      "${path.root}/../provision/05-apt-https.sh",
      "${path.root}/../provision/10-container-runtime.sh",
      "${path.root}/../provision/20-service.sh",
      "${path.root}/../provision/80-harden.sh",
      "${path.root}/../provision/90-verify-hardening.sh",
    ]
  }
}
